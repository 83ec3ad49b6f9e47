"""Exception hierarchy.

Every error a *user* can cause (a bad file, a bad click, a missing tag, a wrong checkpoint) is a
:class:`SegAnyPETError` whose message is one clear sentence naming the problem. The CLI prints that
sentence and exits with status 2; the server answers HTTP 4xx with it. Anything else is a bug.
"""

from __future__ import annotations


class SegAnyPETError(Exception):
    """Base class of all errors a user can cause; ``str(err)`` is shown to the user as is."""


class InputError(SegAnyPETError, ValueError):
    """Bad input data or arguments."""


class ImageReadError(InputError):
    """An image file or folder cannot be read (missing, corrupt, wrong format, unsupported layout)."""


class ImageContentError(InputError):
    """The image was read but its content is unusable (NaNs, wrong dimensionality, empty)."""


class DicomError(ImageReadError):
    """A DICOM series is unusable (not PET, gantry tilt, inconsistent geometry, ...)."""


class SUVError(DicomError):
    """SUV cannot be computed: a tag is missing or contradictory. The message names the tag and the
    option that lets the user give the value."""


class PromptError(InputError):
    """A click or box is malformed or lies outside the image."""


class ModelError(SegAnyPETError):
    """A model cannot be built or loaded."""


class CheckpointError(ModelError):
    """A checkpoint file is unreadable, incomplete or belongs to another network."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint needs arbitrary code execution to load (a pickle beyond the allow-list)."""


class SessionStateError(SegAnyPETError):
    """An operation was asked of a Session that is not in a state to do it (no image, no object)."""
