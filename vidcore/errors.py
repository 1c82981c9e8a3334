"""Exceptions raised by vidcore.

One small hierarchy so callers can catch "anything vidcore refused" (`VidcoreError`) or one kind
of problem. Messages are meant for the user: they name the file, key, shape or argument at fault.
"""

from __future__ import annotations


class VidcoreError(Exception):
    """Base class of every error vidcore raises on purpose."""


class CheckpointError(VidcoreError):
    """Weights that are corrupt, truncated, unsafe to load, or do not fit the model."""


class ConversionError(CheckpointError):
    """A key map could not convert a state dict (unconsumed / missing / unexpected keys, shapes).

    `report` holds the structured details (a `vidcore.conversion.engine.ConversionReport`) when available,
    so tools such as `vidcore inspect` can print more than the message.
    """

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class ConfigError(VidcoreError, ValueError):
    """A config file that is not valid JSON or lacks what the model needs."""


class ModelNotFoundError(VidcoreError, FileNotFoundError):
    """A model folder, hub repo, subfolder or weight file that does not exist."""


class UnsupportedFeatureError(VidcoreError, ValueError, NotImplementedError, AttributeError):
    """A sampling feature this pipeline does not have, or two features that do not combine
    (:mod:`vidcore.pipelines.features` lists which pipeline has which). A ValueError and a NotImplementedError,
    as the refusals it replaces were, and an AttributeError, so ``hasattr(pipe, "enable_free_noise")`` is False
    where the feature is missing."""


class ArgumentError(VidcoreError, ValueError):
    """A pipeline call's argument outside its allowed values (:mod:`vidcore.pipelines.checks`); the message names
    the argument, what it may be and what it got."""


class ArgumentTypeError(ArgumentError, TypeError):
    """A pipeline call's argument of the wrong type: a TypeError, and a ValueError as the checks it replaced were."""
