"""The leaf layer: what data, features, callbacks and models share (errors, batch types, codecs).

Nothing here imports another lit_transfer module outside ``lit_transfer.core``.
"""
