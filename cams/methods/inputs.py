"""The one table of inputs a method can ask for: name → its :class:`cams.passes.Input` declaration.

Each input is declared once, next to its algorithm (see :mod:`cams.passes`); this module only gathers
them, so that :class:`cams.CamMethod` and the engine look every name up in one place.

Example:
    >>> sorted(INPUTS)[:4]
    ['ablation_scores', 'acts', 'attention_gradients', 'attentions']
    >>> declared("hvp").second_order, declared("image").reads_layers
    (True, False)
"""

from __future__ import annotations

from cams.attention_maps import LEGRAD
from cams.bias_gradients import FULLGRAD
from cams.methods.activation import FC_WEIGHTS
from cams.methods.baseline import RANDOM_WEIGHTS
from cams.methods.gradient import HVP
from cams.methods.meta import FINER_GRADS, SESS
from cams.methods.perturbation import ABLATION_SCORES, MASK_SCORES
from cams.methods.recipro import RECIPRO_SCORES, VIT_RECIPRO_SCORES
from cams.methods.relevance import ATTNLRP
from cams.methods.rollout import ATTENTION_GRADIENTS, ATTENTIONS, PATCH_TOKENS, QUERY_TOKENS
from cams.names import close_matches
from cams.noise import INTEGRATED_MASK_SCORES, SMOOTH_GRADS, SMOOTHED_MASK_SCORES
from cams.passes import CORE_INPUTS, Input

__all__ = ["INPUTS", "declared"]

INPUTS: dict[str, Input] = {
    **CORE_INPUTS,
    **{
        declaration.name: declaration
        for declaration in (
            MASK_SCORES,
            ABLATION_SCORES,
            FC_WEIGHTS,
            HVP,
            FINER_GRADS,
            SMOOTH_GRADS,
            SMOOTHED_MASK_SCORES,
            INTEGRATED_MASK_SCORES,
            RANDOM_WEIGHTS,
            FULLGRAD,
            LEGRAD,
            SESS,
            ATTENTIONS,
            ATTENTION_GRADIENTS,
            PATCH_TOKENS,
            QUERY_TOKENS,
            ATTNLRP,
            RECIPRO_SCORES,
            VIT_RECIPRO_SCORES,
        )
    },
}
"""Input name → declaration: the core inputs of :mod:`cams.passes` and those declared with their algorithms."""


def declared(name: str) -> Input:
    """The declaration of the input ``name``.

    Raises:
        ValueError: no input has that name (with close matches).
    """
    try:
        return INPUTS[name]
    except KeyError:
        raise ValueError(
            f"no method input is called {name!r}{close_matches(name, INPUTS)}; the inputs are: {', '.join(INPUTS)}"
        ) from None
