"""fedplug: federated learning whose algorithms are detachable, combinable plug-ins.

    import fedplug
    result = fedplug.run("fedavg_lr_on_synthetic", {"federate.total_round_num": 20})   # docs/python-api.md
"""
# `fedplug.run` is the function. Python sets a subpackage as an attribute of its parent when it first
# loads it, so the subpackage fedplug/run/ (an empty __init__) is loaded before the function is bound:
# a later `from fedplug.run.simulation import ...` then leaves the function in place. Reach the
# subpackage's modules by importing them (`from fedplug.run import outputs`), not as attributes of
# `fedplug.run` (nor with pytest's string form `monkeypatch.setattr("fedplug.run.outputs.x", ...)`).
import fedplug.run as _run_subpackage  # noqa: F401
from fedplug.api import RunResult, run
from fedplug.config import load_config
from fedplug.core.context import Context, CtxVar
from fedplug.core.trainer import Trainer

del _run_subpackage
__version__ = "0.1.0"
__all__ = ["Context", "CtxVar", "RunResult", "Trainer", "load_config", "run", "__version__"]
