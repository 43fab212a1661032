"""diffusers pipelines for the backbones: ``XSwinPipeline`` (class-conditional generation with any
family) and ``DiTPipelineTransformer`` (a backbone inside diffusers' own ``DiTPipeline``)."""
from ..compat import ensure_torchvision_importable

ensure_torchvision_importable()  # diffusers' pipeline modules import torchvision

from .dit_pipeline_transformer import DiTPipelineTransformer  # noqa: E402
from .xswin_pipeline import XSwinPipeline  # noqa: E402
from .export import ModelFolder, export_run, is_model_folder, make_loadable_by_diffusers, read_model_folder  # noqa: E402

import diffusers  # noqa: E402

# DiffusionPipeline.from_pretrained looks a folder's pipeline class up by name in diffusers' own
# namespace: registered there, a saved XSwinPipeline folder loads through it too (a folder passed
# through make_loadable_by_diffusers loads in a process without this import as well)
if not hasattr(diffusers, "XSwinPipeline"):
    diffusers.XSwinPipeline = XSwinPipeline

__all__ = ["XSwinPipeline", "DiTPipelineTransformer", "export_run", "is_model_folder", "make_loadable_by_diffusers",
           "read_model_folder", "ModelFolder"]
