"""TransferClassifier: any backbone + a new head, frozen or fine-tuned, with gradual unfreezing.

The model is this module (building, the unfreeze schedule's application, steps, what it takes from the data and
stores in checkpoints) and the concepts it is made of: :mod:`~lit_transfer.models.metrics` (epoch metrics, their
buffering and the loss finiteness checks), :mod:`~lit_transfer.models.optim` (optimizer, parameter groups,
scheduler), :mod:`~lit_transfer.models.freezing` (which parameters are frozen when) and
:mod:`~lit_transfer.models.schedules` (the learning-rate schedule). The data module is read only through
:class:`lit_transfer.core.contract.DataInfo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info

from lit_transfer.core.batches import FeatureBatch
from lit_transfer.core.class_weights import inverse_frequency_weights
from lit_transfer.core.contract import data_info, trainer_data_info
from lit_transfer.core.errors import CheckpointMismatchError
from lit_transfer.core.lightning_private import quiet_eval_mode_warning
from lit_transfer.core.preprocessing import Preprocessing
from lit_transfer.core.tta import mean_view_log_probs
from lit_transfer.models.backbone_spec import (
    BackboneSpec,
    as_spec,
    backbone_hparams,
    backbone_identity,
    build_from_spec,
)
from lit_transfer.models.freezing import (
    FreezeSpec,
    apply_freeze,
    format_parameter_table,
    frozen_at_epoch,
    frozen_parameter_names,
    parameter_table,
    set_frozen_bn_eval,
)
from lit_transfer.models.fused_steps import fused_batch_end, fused_training_step
from lit_transfer.models.heads import build_head
from lit_transfer.models.layer_groups import check_layer_decay
from lit_transfer.models.metrics import METRIC_FLUSH_BATCHES, EpochMetricsModule
from lit_transfer.models.mixing import BatchMixing
from lit_transfer.models.optim import (
    DEFAULT_OPTIMIZER,
    check_learning_rate,
    check_single_balancing,
    configure_optimization,
    parameter_groups,
)
from lit_transfer.models.schedules import check_schedule_options
from lit_transfer.models.weights_map import WeightsMapSpec

# the public names of this module before metrics and optimization moved out (cli.py and users import them here)
__all__ = ["DEFAULT_OPTIMIZER", "METRIC_FLUSH_BATCHES", "TransferClassifier", "check_single_balancing"]


class TransferClassifier(EpochMetricsModule):
    """A torchvision, timm (or registered) backbone with a new classification head.

    ``num_classes`` and ``class_names`` come from the data module; a config never sets them. Inputs are ``uint8``
    (or float in [0, 1]) batches; normalization happens here, on the device.

    Args:
        num_classes: number of classes (linked from the data module).
        class_names: class names in label order (linked from the data module, stored in checkpoints).
        backbone: torchvision model name (``resnet50``, ``vgg16``, …, or ``torchvision/resnet50``), a timm model as
            ``timm/<architecture>[.<pretrained tag>]`` (``timm/convnext_tiny.fb_in22k``) or ``hf-hub:<org>/<repo>``,
            or a registered one (``smallcnn``); or a mapping (:class:`~lit_transfer.models.backbone_spec.BackboneSpec`)
            grouping what belongs to the backbone: ``{name: resnet50, weights: DEFAULT}``, or a user's own
            ``nn.Module`` as ``{class_path: my_pkg.MyNet, init_args: {width: 16}, weights: path.pth}`` (its
            ``forward`` returns ``(B, D)``, or it has timm-style ``forward_features``/``num_features``; ``D`` is found
            by one forward of a ``(1, 3, input_size, input_size)`` zero batch, ``input_size`` default 224). Its
            parameters keep their own names (``backbone.<name>``) and its children are the stages of ``freeze: N``.
            Weights given both inside the mapping and as ``weights``/``weights_map`` must agree. Checkpoints store a
            name as the plain string and a module as ``{class_path, init_args, input_size}``, with the weights in
            ``weights``/``weights_map``.
        weights: ``null`` (random init), a torchvision weights name (``DEFAULT``, ``IMAGENET1K_V1``), ``pretrained``
            for a timm backbone (downloaded through timm / the Hugging Face Hub), or a path to a weights file: a
            state dict (``.pth``, ``.pt``, ``.safetensors``), a torchvision checkpoint or a lit_transfer checkpoint
            (its backbone part). The file's old classifier is dropped; one line reports what was loaded.
        weights_map: how a weights file saved by another implementation of the same architecture maps onto the
            backbone: ``null`` (by name), ``positional`` (tensors in saved order, every shape checked) or
            ``{strip_prefix: "model.", rename: [[regex, replacement], ...]}`` (see
            :mod:`lit_transfer.models.weights_map`).
        hidden_dims: hidden layer sizes of the head; empty for a linear head.
        dropout: dropout after each hidden layer (before the linear layer of a linear head).
        freeze: ``none`` (fine-tune all), ``backbone`` (feature extraction), N (first N backbone stages) or a list of
            parameter-name patterns.
        unfreeze_at_epoch: epoch at which every frozen backbone parameter starts training.
        unfreeze_milestones: epochs at which frozen stages are unfrozen step by step, from the top stage down.
        backbone_lr_factor: backbone learning rate as a multiple of the head's (with ``layer_decay``: its top stage's).
        layer_decay: layer-wise learning-rate decay in (0, 1]: backbone stage i from the top trains at lr ×
            ``backbone_lr_factor`` × ``layer_decay``**i, each stage its own parameter group ``backbone.<stage>``
            (timm models: timm's per-block grouping); ``null``: one ``backbone`` group.
        optimizer: optimizer class_path/init_args (set with ``--optimizer``); default AdamW(lr=1e-3, wd=0.01).
        lr_scheduler: scheduler class_path/init_args (set with ``--lr_scheduler``); OneCycleLR/CyclicLR are stepped
            per optimizer step (OneCycleLR spans the run unless given ``total_steps``), others per epoch. Giving it
            with ``warmup_epochs`` > 0 or ``cosine`` is an error (see ``lit_transfer.models.schedules``).
        warmup_epochs: linear warm-up in epochs (fractions allowed) of the epoch's real optimizer steps, at least one
            step, stepped per optimizer step.
        cosine: cosine decay to zero over the run's remaining optimizer steps (``max_steps`` or ``max_epochs``).
        restart_at_unfreeze: start the warm-up/cosine schedule again at each unfreeze epoch, each phase decaying
            over its own length (fastai's ``fine_tune``: one cycle frozen, another after unfreezing).
        label_smoothing: label smoothing of the cross-entropy loss.
        mixup_alpha: MixUp of training batches (:mod:`~lit_transfer.models.mixing`): Beta(alpha, alpha) of the
            mixing weight, e.g. 0.2; 0 is off. The loss trains on the mixed soft targets, the training metrics on
            the original labels; validation, test and predict are never mixed.
        cutmix_alpha: CutMix of training batches: Beta(alpha, alpha) of the kept area, e.g. 1.0; 0 is off. With
            both alphas positive a mixed batch gets MixUp or CutMix with probability 0.5 each.
        mix_prob: probability that a training batch is mixed at all (with either alpha positive).
        mean: input normalization mean; ``null`` uses the weights' own, else ImageNet's.
        std: input normalization std; ``null`` uses the weights' own, else ImageNet's.
        top_k: how many ranked classes predictions report.
        on_nonfinite_loss: ``error`` stops at a NaN/inf training loss naming the batch's files; ``skip`` skips the
            batch and counts it.
        class_weights: per-class weights of the training loss; ``auto`` uses inverse class frequencies of the
            training split.
        channels_last: keep convolution weights and input batches in channels-last memory format (faster
            convolutions on GPUs with tensor cores, above all with ``bf16-mixed``/``16-mixed`` precision).
        compile: ``torch.compile`` the backbone and the head when a Trainer runs the model; a dict (even empty)
            compiles with those ``torch.compile`` options (``{mode: max-autotune}``). Checkpoints keep the usual
            parameter names.

    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor
    class_weight: torch.Tensor
    temperature: torch.Tensor  # softmax(logits / temperature): see calibrated()

    def __init__(
        self,
        num_classes: int,
        class_names: list[str] | None = None,
        backbone: str | BackboneSpec = "resnet18",
        weights: str | None = None,
        weights_map: WeightsMapSpec = None,
        hidden_dims: list[int] | None = None,
        dropout: float = 0.0,
        freeze: FreezeSpec = "none",
        unfreeze_at_epoch: int | None = None,
        unfreeze_milestones: list[int] | None = None,
        backbone_lr_factor: float = 1.0,
        layer_decay: float | None = None,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        warmup_epochs: float = 0.0,
        cosine: bool = False,
        restart_at_unfreeze: bool = False,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        top_k: int = 5,
        on_nonfinite_loss: Literal["error", "skip"] = "error",
        class_weights: Literal["auto"] | list[float] | None = None,
        channels_last: bool = False,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes={num_classes}: a classifier needs at least two classes")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for num_classes={num_classes}")
        if unfreeze_at_epoch is not None and unfreeze_milestones:
            raise ValueError("give model.unfreeze_at_epoch or model.unfreeze_milestones, not both")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"model.label_smoothing={label_smoothing}: use a value in [0, 1), e.g. 0.1")
        self.mixing = BatchMixing(num_classes, mixup_alpha, cutmix_alpha, mix_prob)  # checks the three values
        check_learning_rate(optimizer)
        check_layer_decay(layer_decay)
        milestones = [unfreeze_at_epoch] if unfreeze_at_epoch is not None else sorted(unfreeze_milestones or [])
        # before any weights are built or downloaded
        check_schedule_options(lr_scheduler, warmup_epochs, cosine, restart_at_unfreeze, milestones)
        spec = as_spec(backbone, weights, weights_map)  # model.backbone (a name or a spec) and the flat flags
        stored, weights, weights_map = backbone_hparams(spec)
        backbone = cast(Any, stored)  # Lightning saves the init frame's locals: checkpoints hold plain values only
        self.save_hyperparameters()
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        built = build_from_spec(spec)
        self.backbone_name = backbone_identity(spec)  # for logs and reports: resnet50, my_pkg.MyNet
        self.backbone = built.module
        self.head = build_head(built.feature_dim, num_classes, hidden_dims or [], dropout)
        self.register_buffer("mean", torch.tensor(mean or built.mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std or built.std, dtype=torch.float32).view(1, -1, 1, 1))
        self.milestones = milestones
        self.initial_frozen = frozen_parameter_names(self.backbone, freeze)
        self.frozen: set[str] = set()
        self._grad_masked = False
        self._set_frozen(self.frozen_at_epoch(0))
        if isinstance(class_weights, list) and len(class_weights) != num_classes:
            raise ValueError(f"model.class_weights has {len(class_weights)} values for {num_classes} classes")
        given = torch.tensor(class_weights, dtype=torch.float32) if isinstance(class_weights, list) else None
        self.register_buffer("class_weight", given if given is not None else torch.ones(num_classes))
        # the model's probabilities are softmax(logits / temperature): 1 until --calibrate temperature fits it after
        # training (lit_transfer.models.calibration); no loss and no arg-max sees it
        self.register_buffer("temperature", torch.ones(()))
        self.register_load_state_dict_pre_hook(_default_temperature)  # checkpoints from before calibration
        self.init_epoch_metrics(num_classes)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self._compiled = False

    # --- freezing -------------------------------------------------------------------------------------------------

    def frozen_at_epoch(self, epoch: int) -> set[str]:
        """The backbone parameters frozen during ``epoch`` under the unfreeze schedule."""
        return frozen_at_epoch(self.backbone, self.initial_frozen, self.milestones, epoch)

    def _set_frozen(self, frozen: set[str]) -> None:
        self.frozen = frozen
        # Under DDP the set of parameters that need gradients is fixed when the model is wrapped, so a parameter
        # that thaws later would silently never be synchronised (Lightning #20340). With an unfreeze schedule on
        # several processes, every parameter that will ever train keeps requires_grad and frozen ones have their
        # gradients dropped before each optimizer step instead.
        apply_freeze(self.backbone, set() if self._grad_masked else frozen)
        set_frozen_bn_eval(self.backbone, frozen)
        if self.backbone_fully_frozen:
            self.backbone.eval()

    @property
    def backbone_fully_frozen(self) -> bool:
        """Whether no backbone parameter trains now (the backbone then runs in eval mode)."""
        return len(self.frozen) == sum(1 for _ in self.backbone.parameters())

    def train(self, mode: bool = True) -> TransferClassifier:
        """Switch modes, keeping frozen BatchNorm layers (or a fully frozen backbone) in eval mode."""
        super().train(mode)
        if mode:
            if self.backbone_fully_frozen:
                self.backbone.eval()
            else:
                set_frozen_bn_eval(self.backbone, self.frozen)
        return self

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients of frozen parameters (only present under DDP with an unfreeze schedule)."""
        if self._grad_masked and self.frozen:
            for name, param in self.backbone.named_parameters():
                if name in self.frozen:
                    param.grad = None

    def on_train_epoch_start(self) -> None:
        """Apply the unfreeze schedule for this epoch (derived from the epoch, so a resumed run gets it too)."""
        self._metric_buffer.clear("train")
        frozen = self.frozen_at_epoch(self.current_epoch)
        if frozen != self.frozen:
            before = len(self.frozen)
            self._set_frozen(frozen)
            self.train()
            rank_zero_info(
                f"epoch {self.current_epoch}: unfroze {before - len(frozen)} backbone tensors, {len(frozen)} frozen"
            )
            self._log_parameter_table()

    # --- forward and steps ----------------------------------------------------------------------------------------

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 or [0, 1] float images → normalized float images (channels-last with ``channels_last``)."""
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)  # on the uint8 batch: a quarter of the bytes
        x = x.float().div_(255) if x.dtype == torch.uint8 else x - 0.0  # a new tensor: never modify the caller's
        return x.sub_(self.mean).div_(self.std)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(B, D)`` of a batch of images."""
        x = self.normalize(x)
        if self.backbone_fully_frozen and not self._grad_masked:
            with torch.no_grad():
                return self.backbone(x)
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of a batch of images."""
        return self.head(self.forward_features(x))

    def logits(self, batch: Sequence[Any]) -> torch.Tensor:
        """Class logits of a batch: its images through backbone and head, or its cached features through the head.

        A TTA batch ``(B, V, C, H, W)`` (``data.init_args.tta``) runs its ``B * V`` views and gives the log of each
        image's mean softmax probability over its views: softmax of it is the averaged prediction.
        """
        if isinstance(batch, FeatureBatch):
            return self.head(batch.features)
        images = batch[0]
        if images.dim() == 5:
            return mean_view_log_probs(self(images.flatten(0, 1)), images.shape[1])
        return self(images)

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits / temperature``: their softmax is the model's probabilities (the logits' own until calibrated)."""
        return logits / self.temperature

    def _reset_temperature(self) -> None:
        """Training starts uncalibrated: a temperature fitted for earlier weights does not fit the new ones."""
        if float(self.temperature) != 1.0:
            rank_zero_info(
                f"temperature {float(self.temperature):.4g} of the checkpoint reset to 1 for training; "
                "--calibrate temperature fits one again after fit"
            )
            self.temperature.fill_(1.0)

    def _shared_step(self, batch: Sequence[Any], stage: str) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        y = batch[1]
        if len(y) == 0:  # every image of the batch was unreadable (and reported by the data module)
            return None, None
        targets = y
        if stage == "train" and self.mixing.enabled:  # soft targets for the loss; the metrics keep the labels y
            batch, targets = self.mixing.mix_batch(batch)
        logits = self.logits(batch)
        # class weights apply to the training loss only, so val_loss stays comparable between runs
        weight = self.class_weight if stage == "train" and self.hparams["class_weights"] is not None else None
        loss = F.cross_entropy(logits, targets, weight=weight, label_smoothing=self.hparams["label_smoothing"])
        if stage == "train":
            indices = batch[2] if len(batch) > 2 else None
            if self.hparams["on_nonfinite_loss"] == "skip":
                if not torch.isfinite(loss):  # skipping must be decided now: one device sync per step
                    self._non_finite(loss.item(), indices, self.global_step, self.current_epoch)  # counts, or raises
                    return None, logits
            else:
                # Checked when the metrics are flushed (and before any checkpoint is written), not every step: a
                # per-step check would make the host wait for the device at every step.
                self._metric_buffer.defer_check(loss.detach(), indices, self.global_step, self.current_epoch)
        # the metrics (val_ece) see the model's probabilities; val_loss stays the raw logits' (comparable between runs)
        scores = logits.detach() if stage == "train" else self.calibrated(logits.detach())
        self._buffer(stage, scores, y, loss.detach())
        return loss, logits

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor | None:
        """Cross-entropy on one batch (with ``cache_features.fused_steps``: each of several, one step each)."""
        if not self.automatic_optimization:
            fused_training_step(self, batch, batch_idx, lambda one: self._shared_step(one, "train")[0])
            return None
        return self._shared_step(batch, "train")[0]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """With fused steps, step the epoch-wise schedulers where Lightning would (after the epoch's last batch)."""
        if not self.automatic_optimization:
            fused_batch_end(self)

    def validation_step(self, batch: Sequence[Any], batch_idx: int) -> dict[str, torch.Tensor] | None:
        """Accumulate validation loss and metrics; the logits go on to callbacks (TensorBoardReports)."""
        _, logits = self._shared_step(batch, "val")
        return None if logits is None else {"logits": logits.detach()}

    def test_step(self, batch: Sequence[Any], batch_idx: int) -> None:
        """Accumulate test loss and metrics."""
        self._shared_step(batch, "test")

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Class probabilities and the dataset indices of the batch's files."""
        return {"probs": self.calibrated(self.logits(batch)).softmax(dim=1), "index": batch[1]}

    # --- optimization ---------------------------------------------------------------------------------------------

    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Head and backbone groups (per stage with ``layer_decay``); anything that ever trains is in from the start."""
        factor, trains_later = self.hparams["backbone_lr_factor"], bool(self.milestones)
        decay = self.hparams.get("layer_decay")
        return parameter_groups(self.head, self.backbone, lr, factor, self.initial_frozen, trains_later, decay)

    def configure_optimizers(self) -> Any:
        """The optimizer over the parameter groups, and the scheduler (given, or warm-up/cosine per optimizer step)."""
        hp = self.hparams
        restarts = self.milestones if hp.get("restart_at_unfreeze") else []
        return configure_optimization(
            self.parameter_groups,
            self._trainer,
            hp["optimizer"],
            hp["lr_scheduler"],
            hp["warmup_epochs"],
            hp["cosine"],
            restarts,
        )

    # --- reporting and checkpoints --------------------------------------------------------------------------------

    def _log_parameter_table(self) -> None:
        table = format_parameter_table(parameter_table(self.backbone, self.head, self.frozen))
        rank_zero_info(f"{self.backbone_name} parameters:\n{table}")
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            self.logger.experiment.add_text("parameters", f"```\n{table}\n```", self.global_step)

    def setup(self, stage: str) -> None:
        """Take what the data knows before fitting: inverse-frequency class weights, dataset normalization."""
        if stage == "fit" and self.milestones and self._trainer is not None and self.trainer.world_size > 1:
            self._grad_masked = True
            self._set_frozen(self.frozen)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if stage != "fit" or datamodule is None:
            return
        data = data_info(datamodule)
        if data is None:  # not a lit_transfer data module: nothing is taken from it
            if self.hparams["class_weights"] == "auto":
                raise ValueError(
                    f"model.init_args.class_weights: auto needs the training labels, which {type(datamodule).__name__}"
                    " does not give (lit_transfer's data modules do: train_targets()); give class_weights as a list"
                )
            return
        check_single_balancing(self.hparams["class_weights"], data.sampler)
        if self.hparams["class_weights"] == "auto":
            # the labels trained on: RotNet's are its views' rotations, not its source images' (all 0)
            self.class_weight.copy_(inverse_frequency_weights(data.train_targets(), self.hparams["num_classes"]))
            rank_zero_info(f"class weights (inverse frequency): {[round(w, 3) for w in self.class_weight.tolist()]}")
        stats = data.normalization
        if stats is not None and self.hparams["mean"] is None and self.hparams["std"] is None:
            mean, std = stats
            self.mean.copy_(torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.std.copy_(torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
            rank_zero_info(f"normalizing with the training split's mean {mean} and std {std}")

    def configure_model(self) -> None:
        """Apply the GPU paths when a Trainer runs the model: channels-last weights, then ``torch.compile``."""
        if self.hparams["channels_last"]:
            self.backbone.to(memory_format=torch.channels_last)
        if (self.hparams["compile"] is True or isinstance(self.hparams["compile"], dict)) and not self._compiled:
            options = self.hparams["compile"] if isinstance(self.hparams["compile"], dict) else {}
            # nn.Module.compile compiles in place: state-dict keys stay free of ``_orig_mod.``
            self.backbone.compile(**options)
            self.head.compile(**options)
            self._compiled = True

    def on_fit_start(self) -> None:
        """Print and log the trainable/frozen parameter table (frozen parts are in eval mode on purpose: no warning)."""
        quiet_eval_mode_warning(self.trainer.fit_loop)
        self._log_parameter_table()
        self._reset_temperature()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store what a user of the checkpoint needs to know, as plain types; never save after a NaN loss."""
        self.check_finite()
        data = trainer_data_info(self)
        checkpoint["lit_transfer"] = {
            "class_names": list(self.class_names),
            "mean": self.mean.flatten().tolist(),
            "std": self.std.flatten().tolist(),
            "image_size": data.image_size if data is not None else None,
            "preprocessing": self._preprocessing_record(data),
            "manifest_hash": data.manifest_hash if data is not None else None,
            "temperature": float(self.temperature),
        }

    def _preprocessing_record(self, data: Any) -> dict[str, Any] | None:
        """The data's evaluation preprocessing, with the mean/std this model really normalizes with."""
        pre = getattr(data, "preprocessing", None)
        if not isinstance(pre, Preprocessing):
            return None
        return pre.to_dict() | {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose classes differ from this model's; resuming fit, start uncalibrated.

        The temperature is reset in the checkpoint itself, before the callbacks read it: the EMA callback takes its
        average from ``state_dict``, and a calibrated one would carry the fitted temperature into training.
        """
        saved = checkpoint.get("lit_transfer", {}).get("class_names")
        if saved is not None and list(saved) != list(self.class_names):
            raise CheckpointMismatchError(
                f"the checkpoint was trained on classes {saved}, but the data has {self.class_names}; "
                "use the data the checkpoint was trained on"
            )
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            for key in ("state_dict", "current_model_state"):  # the live weights beside an EMA: current_model_state
                weights = checkpoint.get(key)
                if isinstance(weights, dict) and isinstance(weights.get("temperature"), torch.Tensor):
                    weights["temperature"] = torch.ones_like(weights["temperature"])


def _default_temperature(module: Any, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
    """A state dict from before calibration existed loads with temperature 1 (a ``load_state_dict`` pre-hook)."""
    key = f"{prefix}temperature"
    if key not in state_dict and any(k.startswith(f"{prefix}head.") for k in state_dict):
        state_dict[key] = torch.ones(())
