"""Detection models: the ResNet backbone with per-stage wiring, Faster R-CNN + FPN, what a model is, its weights.

``ModelConfig.from_name(name)`` says what a named model is (:mod:`genattn.models.config`); ``get_model(name,
weights=...)`` builds one (see :mod:`genattn.models.zoo`); :mod:`genattn.models.weights` reads every checkpoint
file and loads it into the model it holds; :mod:`genattn.models.export` turns a detector into one ``torch.export``
or ONNX graph.
"""

from genattn.models.classes import Classes
from genattn.models.config import BackboneConfig, HeadsConfig, ModelConfig
from genattn.models.detector import FPN, FasterRCNN
from genattn.models.export import export_onnx, export_program, load_program, save_program
from genattn.models.weights import Checkpoint, load_model, read_checkpoint
from genattn.models.zoo import MODELS, ModelInfo, get_model, list_models

__all__ = ["BackboneConfig", "Checkpoint", "Classes", "FPN", "FasterRCNN", "HeadsConfig", "MODELS", "ModelConfig",
           "ModelInfo", "export_onnx", "export_program", "get_model", "list_models", "load_model", "load_program",
           "read_checkpoint", "save_program"]
