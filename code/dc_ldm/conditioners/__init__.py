"""Stage B's fMRI conditioners, one class per scheme (`base.Conditioner` says what a scheme states).

`CONDITIONERS` maps `--conditioner` (and the name a checkpoint stores) to the class; a new scheme is its module
here and one entry below.
"""

from dc_ldm.conditioners.base import Conditioner
from dc_ldm.conditioners.patch_tokens import PatchTokens
from dc_ldm.conditioners.published import NUM_CONTEXT_TOKENS, GlobalPool, LinearPool, Published

CONDITIONERS: dict[str, type[Conditioner]] = {c.name: c for c in (Published, GlobalPool, LinearPool, PatchTokens)}

__all__ = ["CONDITIONERS", "NUM_CONTEXT_TOKENS", "Conditioner"]
