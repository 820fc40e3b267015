"""PID-1 supervisor for ComfyUI GPU pods: plan, fetch, launch, supervise."""

__version__ = "0.1.0"
