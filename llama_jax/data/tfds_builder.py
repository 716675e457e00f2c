"""Turn a local folder of text files into a TFDS data set in array_record format.

No TensorFlow: TFDS writes array_record files and reads them back through
`tfds.data_source` / `builder.as_data_source` with numpy only. Each file is one
example with features `text` (the file's text) and `path` (relative path).
Read the result with a `SourceSpec(kind='tfds', path=<returned folder>)` or
`SourceSpec(kind='tfds', path=name, data_dir=data_dir)`.

    >>> from llama_jax.data.tfds_builder import build_text_folder_dataset
    >>> folder = build_text_folder_dataset('/data/my_texts', '/data/tfds', name='my_texts')
"""

from __future__ import annotations

import glob
import os
import re
import types

from llama_jax.data.sources import DataError

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


def _builder_class():
    """The builder class, defined on first use so that importing this module stays cheap."""
    import tensorflow_datasets as tfds

    class LocalTextFolder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """One example per text file of a local folder (UTF-8)."""

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "Text files of a local folder."}

        def __init__(self, *, folder: str, pattern: str, **kwargs):
            self._folder = folder
            self._pattern = pattern
            super().__init__(**kwargs)

        def _info(self):
            # `dataset_info_from_configs` needs a package folder; build the info directly.
            return tfds.core.DatasetInfo(
                builder=self,
                description=f"Text files of {self._folder} ({self._pattern}).",
                features=tfds.features.FeaturesDict({"text": tfds.features.Text(), "path": tfds.features.Text()}),
            )

        def _split_generators(self, dl_manager):
            del dl_manager
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            files = sorted(p for p in glob.glob(os.path.join(self._folder, self._pattern), recursive=True)
                           if os.path.isfile(p))
            for path in files:
                rel = os.path.relpath(path, self._folder)
                with open(path, "rb") as f:
                    data = f.read()
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"build_text_folder_dataset: {path} is not UTF-8 (bytes {e.start}..{e.end}); "
                                    "re-encode it or remove it from the folder") from None
                if text.strip():
                    yield rel, {"text": text, "path": rel}

    return LocalTextFolder


def build_text_folder_dataset(folder: str, data_dir: str, *, name: str = "local_text_folder",
                              pattern: str = "**/*", version: str = "1.0.0") -> str:
    """Builds (once) an array_record TFDS data set from `folder`; returns its version folder.

    Args:
      folder: the folder of UTF-8 text files (empty files are left out).
      data_dir: where TFDS data sets live; the data set goes to `data_dir/name/version`.
      name: the data set name (lower_snake_case).
      pattern: glob of files under `folder` (recursive `**` allowed).
      version: the data set version string.

    Returns:
      The built data set folder (pass it as a tfds `SourceSpec.path`).
    """
    if not _NAME_RE.match(name):
        raise DataError(f"build_text_folder_dataset: name={name!r} must be lower_snake_case")
    if not os.path.isdir(folder):
        raise DataError(f"build_text_folder_dataset: folder {folder!r} does not exist")
    if not any(os.path.isfile(p) for p in glob.glob(os.path.join(folder, pattern), recursive=True)):
        raise DataError(f"build_text_folder_dataset: no files match {pattern!r} under {folder!r}")
    import tensorflow_datasets as tfds

    cls = _builder_class()
    def body(ns):
        ns.update(name=name, VERSION=tfds.core.Version(version))

    builder_cls = types.new_class(f"LocalText_{name}", (cls,), {"skip_registration": True}, body)
    builder = builder_cls(folder=os.path.abspath(folder), pattern=pattern, data_dir=os.path.abspath(data_dir),
                          file_format="array_record")
    builder.download_and_prepare()
    if builder.info.splits["train"].num_examples == 0:
        raise DataError(f"build_text_folder_dataset: every file under {folder!r} matching {pattern!r} is empty")
    return builder.data_dir
