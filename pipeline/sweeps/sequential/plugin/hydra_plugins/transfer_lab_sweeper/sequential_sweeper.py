"""hydra/sweeper=sequential, as Hydra 1.3 finds a sweeper: a class of the `hydra_plugins`
namespace package. The sweeper is pipeline/sweeps/sequential/sweeper.py."""

from pipeline.sweeps.sequential.sweeper import SequentialSweeper as ProjectSweeper


class SequentialSweeper(ProjectSweeper):
    """conf/hydra/sweeper/sequential.yaml's `_target_`."""
