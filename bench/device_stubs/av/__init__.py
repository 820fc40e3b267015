"""Import-only stand-in for PyAV on the GPU bench machine, where the real wheel (35 MB) does not fit the transfer
limit beside ffmpeg. ComfyUI v0.3.64 imports `av` at start-up for its own video types and VideoHelperSuite for a
preview route; the SteadyDancer workflows use neither (VideoHelperSuite encodes the MP4 with the ffmpeg executable
and reads the driving video with OpenCV). Any attribute is a placeholder class; calling PyAV for real raises.
Never on the path of the product: `bench/gpu_classes.py --av-stub` puts it there for a bench run only."""

import importlib.abc
import importlib.machinery
import sys
import types

__version__ = "0.0.0-standin"


class _Placeholder:
    def __init__(self, *args, **kwargs):
        raise RuntimeError("PyAV is not installed on this bench machine (import-only stand-in)")

    def __class_getitem__(cls, item):
        return cls


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return type(name, (_Placeholder,), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname.startswith("av."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []
        module.__getattr__ = __getattr__
        return module

    def exec_module(self, module):
        pass


sys.meta_path.append(_Finder())
__path__ = []
