"""Differential-diffusion server: model loading, the pipelines, the job queue and websocket app."""

import logging

# transformers warns, at import time, that CLIP/Siglip image processors fall back to their PIL
# versions without torchvision. We never use them (no safety checker, no image prompts), so the
# two lines would only puzzle whoever starts the server.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision" not in record.getMessage())
