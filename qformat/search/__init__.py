"""Parameter searches used by the block encoders.

:mod:`qformat.search.ggml` holds vectorized, bit-exact ports of ggml's own searches (what
``llama-quantize`` runs), so the ``"ggml"`` encode mode reproduces ggml's bytes.

Layout convention for every search here: the values of one group (a 32- or 16-element sub-block)
run down the LEADING axis and the groups across the trailing axis, i.e. arrays are
``(group_len, ngroups)``. ggml sums a group's values one after another in float32; reducing over the
leading axis of a C-contiguous array does exactly that, element-wise across all groups at once.
"""
