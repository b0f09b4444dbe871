"""fedplug: federated learning whose algorithms are detachable, combinable plug-ins."""
from fedplug.config import load_config
from fedplug.core.context import Context, CtxVar
from fedplug.core.trainer import Trainer

__version__ = "0.1.0"
__all__ = ["Context", "CtxVar", "Trainer", "load_config", "__version__"]
