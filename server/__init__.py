"""Differential-diffusion server: model loading, the pipelines, the job queue and websocket app."""
