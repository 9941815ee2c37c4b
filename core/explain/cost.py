"""What an explainer costs a job, and the warning a costly one gets.

Each explainer declares its cost per batch of maps (`Explainer.cost`: extra batch-sized forwards
and backward passes). The gradient CAMs cost one backward, like Grad-CAM; the score-based ones
(Score-CAM, SS-CAM, IS-CAM) one forward per channel of the explained layer and per sample draw,
paid for the teacher's target maps on every guided step (the student is explained by Grad-CAM,
`Explainer.student_explainer`). `loss.explanation.every` bounds it: maps are made on every
`every`-th step only.
"""

from __future__ import annotations

import math

from core.explain.registry import get_explainer

# A job is warned when its explainer's extra forwards exceed both of these.
COSTLY_FORWARDS_PER_STEP = 8  # far above a training step's own forward-backward-backward (~3 forwards)
LARGE_JOB_FORWARDS = 20_000  # the extra batch forwards of the whole job


def explanation_cost_warning(explainer: str, every: int, steps: int, channels: int) -> str | None:
    """A warning with the estimated extra cost when `explainer` would make a job of `steps` steps much slower.

    `channels` is the teacher's explained layer's channel count (the score-based methods' masks).
    None when the cost is small or `every` already bounds it.
    """
    forwards, _ = get_explainer(explainer).cost(channels)
    guided = math.ceil(steps / every)
    extra = forwards * guided
    if forwards < COSTLY_FORWARDS_PER_STEP or extra < LARGE_JOB_FORWARDS:
        return None
    return (f"explainer '{explainer}' runs about {forwards} extra teacher forwards per guided step "
            f"({channels} channels of the explained layer) on {guided} guided steps: about {extra} extra batch "
            f"forwards, roughly {forwards / 3:.0f}x the cost of a training step (fewer when the teacher's maps "
            f"are cached: unaugmented data); set loss.explanation.every to make maps on every N-th step only")
