"""Command and attribute numbers of the lazarus_core family, read from its YAML spec
(the same source the kernel module and lzctl are generated from)."""
import os

import yaml

_SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "rust/proto/specs/lazarus_core.yaml")

with open(_SPEC) as _f:
    _spec = yaml.safe_load(_f)

CMD = {op["name"]: i for i, op in enumerate(_spec["operations"]["list"], start=1)}
ATTR = {a["name"]: i for i, a in enumerate(_spec["attribute-sets"][0]["attributes"], start=1)}
