"""Named search spaces over dotted trainer-config keys, written as data.

A space is a list of `Param`s. `when` makes a parameter conditional on values sampled before
it (e.g. the mask threshold only exists when a masked loss is on); conditional spaces are
handed to Optuna in define-by-run form so its sampler sees the true structure. Nothing here
knows about Ray Train or the model's insides.
"""

from search_spaces.space import (
    SPACES,
    Param,
    SearchSpaceError,
    check_space,
    define_by_run,
    get_space,
)

__all__ = [
    "check_space",
    "SPACES",
    "Param",
    "SearchSpaceError",
    "define_by_run",
    "get_space",
]
