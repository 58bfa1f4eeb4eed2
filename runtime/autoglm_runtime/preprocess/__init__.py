"""Model-input preprocessing in numpy/PIL only (no torch), shared by every runtime and mirrored by the demo apps."""

from .audio import AudioSpec, load_wav, log_mel, mel_filters, preprocess_audio, resample
from .image import CLIP_MEAN, CLIP_STD, ImageSpec, PreparedImage, load_image, prepare_image, preprocess_image

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "AudioSpec",
    "ImageSpec",
    "load_image",
    "PreparedImage",
    "load_wav",
    "log_mel",
    "mel_filters",
    "prepare_image",
    "preprocess_audio",
    "preprocess_image",
    "resample",
]
