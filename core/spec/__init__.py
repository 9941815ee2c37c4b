"""The public contract: the job spec (`job`) and the sweep grid over it (`sweep`).

Import the spec from here: `from core.spec import JobSpec`.
"""

from core.spec.job import *  # noqa: F403  (the spec's public names)
from core.spec.job import __all__
