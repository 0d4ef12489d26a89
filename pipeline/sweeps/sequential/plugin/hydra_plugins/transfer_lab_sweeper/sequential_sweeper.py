"""hydra/sweeper=sequential, as Hydra 1.3 finds a sweeper: a class of the `hydra_plugins`
namespace package. The sweeper is pipeline/sweeps/sequential/sweeper.py (imported as a module, so
that Hydra's plugin scan lists only this class)."""

from pipeline.sweeps.sequential import sweeper


class SequentialSweeper(sweeper.SequentialSweeper):
    """conf/hydra/sweeper/sequential.yaml's `_target_`."""
