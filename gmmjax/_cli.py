"""Command line: ``gmmjax fit | select | predict | score | sample | demo`` (also ``python -m gmmjax ...``).

Each command is one ``_add_<name>`` function (its arguments) and one ``_run_<name>``
function (the work); :data:`_COMMANDS` lists the adders. Every user error, from a bad
option to a data file with NaN, ends the program with a non-zero exit code and ONE line on
stderr (``gmmjax fit: error: ...``), never a traceback: argparse errors exit with 2, errors
in the data, model files or values (:class:`CLIError`, the library's ``ValueError``\\ s,
unwritable files) with 1.

Data files: ``.npy`` (one array), ``.npz`` (the single array inside, or ``--key NAME``),
``.csv`` / ``.txt`` / ``.tsv`` (numbers separated by commas, semicolons, tabs or spaces; ``#``
starts a comment). A 1-D array is one feature. Text tables are read with the standard library
and NumPy (no pandas): :class:`TableOptions` documents the rules (header detection, the index
column of ``pandas.DataFrame.to_csv``, missing values, ``--columns``), which the data options of
every command set. Feature names from a header appear in ``fit``'s summary and ``--plot``.
``gmmjax fit`` also streams (exact out-of-core EM) large ``.npy`` files, folders of ``.npy``
or ``.parquet`` shards, Parquet files and Zarr arrays (``--columns`` picks Parquet columns by
name or index); ``predict``, ``score`` and ``select`` read those too, into memory, with the
same source classes (:mod:`gmmjax._streaming`): the same rows, checks and messages.

Only JAX-free modules are imported at the top: ``gmmjax --help``, ``gmmjax CMD --help`` and
argument errors run without importing JAX (through the console script's launcher
:mod:`gmmjax_cli`; ``python -m gmmjax`` imports the package, and so JAX, first). Commands turn
on JAX's persistent compilation cache (:func:`gmmjax.enable_compilation_cache`) unless
``--no-cache`` or ``GMMJAX_NO_CACHE=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import os
import sys
import time
import warnings

import numpy as np

# Only JAX-free modules at the top (``gmmjax --help`` and argument errors never import JAX);
# each command imports the library inside its ``_run_*`` function.
from gmmjax._names import COVARIANCE_TYPES, CRITERIA, INIT_METHODS

# The original example's mixture.
DEMO_WEIGHTS = np.array([0.6, 0.4])
DEMO_MEANS = np.array([[0, 0], [3, 3]])
DEMO_COVARIANCES = np.array([[[1, 0.5], [0.5, 1]], [[1, 0.5], [0.5, 1]]])

TEXT_EXTENSIONS = (".csv", ".txt", ".tsv")

# DATA of the commands that read it into memory (fit streams the same formats, see its help).
DATA_HELP = (
    "data file: .npy, .npz (see --key) or .csv/.txt/.tsv; also a .parquet file or a folder of .parquet "
    "or .npy shards (Parquet: pip install 'gmmjax[parquet]') or a Zarr array .zarr (pip install "
    "'gmmjax[zarr]'), read into memory"
)


class CLIError(Exception):
    """A user error the command line reports as one line (exit code 1)."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``gmmjax fit: error: ... (see gmmjax fit --help)``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- argument types ------------------------------------------------------------------------------
def _int_at_least(minimum, maximum=None):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


_seed = _int_at_least(0, 2**63 - 1)  # jax.random.key's range


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative finite number, got {text}")
    return value


def _num_components_range(text):
    """``-k`` of ``select``: ``A:B`` (A..B), ``K`` (1..K) or a comma list, as an increasing tuple."""

    def integer(field):
        try:
            value = int(field)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected A:B (e.g. 1:10), K (for 1..K) or a comma list of integers (e.g. 2,4,8), got {text!r}"
            ) from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"numbers of components must be at least 1, got {value} in {text!r}")
        return value

    if ":" in text:
        fields = text.split(":")
        if len(fields) != 2:
            raise argparse.ArgumentTypeError(f"expected one range A:B (e.g. 1:10), got {text!r}")
        first, last = map(integer, fields)
        if last < first:
            raise argparse.ArgumentTypeError(f"empty range {text!r}: A:B needs A <= B (e.g. 1:10)")
        return tuple(range(first, last + 1))
    values = [integer(field) for field in text.split(",")]
    if len(values) == 1:
        return tuple(range(1, values[0] + 1))
    if len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r} lists a number of components more than once")
    return tuple(sorted(values))


def _covariance_types(text):
    """``--covariance-type`` of ``select``: a type, ``all`` or a comma list of types."""
    if text == "all":
        return COVARIANCE_TYPES
    types = tuple(field.strip() for field in text.split(","))
    for name in types:
        if name not in COVARIANCE_TYPES:
            raise argparse.ArgumentTypeError(
                f"unknown covariance type {name!r}: choose from "
                f"{', '.join(COVARIANCE_TYPES)}, a comma list of them, or all"
            )
    if len(set(types)) != len(types):
        raise argparse.ArgumentTypeError(f"{text!r} lists a covariance type more than once")
    return types


# -- shared input and output ---------------------------------------------------------------------
def _extension(path) -> str:
    return os.path.splitext(os.fspath(path))[1].lower()


# Fields read as missing values (case-insensitive): an error naming line and column, or with
# --dropna the row is left out.
NA_TOKENS = frozenset({"", "na", "n/a", "nan", "-nan", "null", "none"})
WHITESPACE = "whitespace"  # --delimiter whitespace: runs of spaces and tabs


@dataclasses.dataclass(frozen=True)
class TableOptions:
    """How to read a data file (the command line's data options; ``None``: detect).

    Attributes:
      columns: features to use, each a header name or a 0-based column index (a name wins
        when it is both); default: every column except the index column.
      index_col: a column of row labels to leave out (name or 0-based index); default: the
        first column when its header name is empty (as ``pandas.DataFrame.to_csv`` writes
        it) or when the header has one name fewer than the rows (R's ``write.table``).
      header: the first line holds column names (``True``), is data (``False``), or
        ``None``: it does when one of its fields is not a number (nor a missing value), or
        when it is ``,0,1,...`` (pandas' ``to_csv`` of a DataFrame made from an array).
      dropna: leave out rows with a missing value (an empty field, NA, NaN...) in a used
        column; default: such a value is an error naming its line and column.
      delimiter: one character, ``"whitespace"`` (runs of spaces and tabs), or ``None``: comma,
        semicolon or tab, whichever the first line holds (in that order), else whitespace.
      decimal: the decimal mark, ``"."`` or e.g. ``","`` (then the delimiter cannot be a comma).
    """

    columns: tuple | None = None
    index_col: str | None = None
    header: bool | None = None
    dropna: bool = False
    delimiter: str | None = None
    decimal: str = "."


@dataclasses.dataclass(frozen=True)
class Data:
    """A data file's ``(N, D)`` array, its feature names (from a header) and the rows left out."""

    X: np.ndarray
    feature_names: tuple | None = None
    dropped_lines: tuple = ()


def _strip_comment(line: str) -> str:
    return line.split("#", 1)[0]


def _unquote(field: str) -> str:
    return field[1:-1] if len(field) >= 2 and field[0] == field[-1] == '"' else field


def _splitter(delimiter):
    if delimiter is None:  # runs of whitespace; R's write.table quotes names: "x" "y"
        return lambda text: [_unquote(field) for field in text.split()]
    return lambda text: [field.strip() for field in next(csv.reader([text], delimiter=delimiter))]


def _number(field: str, decimal: str):
    """The float a field holds, or ``None``."""
    if decimal != ".":
        if "." in field:
            return None
        field = field.replace(decimal, ".")
    try:
        return float(field)
    except ValueError:
        return None


def _is_na(field: str) -> bool:
    return field.lower() in NA_TOKENS


def _resolve_column(spec: str, names, num_columns: int, what: str, path) -> int:
    if names is not None and spec in names:
        if names.count(spec) > 1:
            raise CLIError(f"{path}: {what} {spec!r} names {names.count(spec)} columns: use its 0-based index")
        return names.index(spec)
    try:
        index = int(spec)
    except ValueError:
        known = f"its columns are {', '.join(map(repr, names))}" if names is not None else "it has no header line"
        raise CLIError(f"{path}: {what} {spec!r} is not a column name ({known}) nor a 0-based index") from None
    if not 0 <= index < num_columns:
        raise CLIError(
            f"{path}: {what} {index} is out of range: the file has {num_columns} columns (0 to {num_columns - 1})"
        )
    return index


def _column_label(c: int, names) -> str:
    """A column as ``--columns`` names it: ``column 'x' (index 1)`` or ``column index 1`` (0-based)."""
    return f"column {names[c]!r} (index {c})" if names is not None and names[c] else f"column index {c}"


def _read_text_table(path, options: TableOptions) -> Data:
    with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    content = [i for i, line in enumerate(lines) if _strip_comment(line).strip()]
    if not content:
        raise CLIError(f"{path}: no data (the file is empty)")
    decimal = options.decimal
    delimiter = options.delimiter
    if delimiter is None:
        first_text = _strip_comment(lines[content[0]])
        delimiter = next((d for d in (",", ";", "\t") if d in first_text and d != decimal), None)
    elif delimiter == WHITESPACE:
        delimiter = None
    if delimiter == decimal:
        raise CLIError(f"{path}: the delimiter and the decimal mark are both {decimal!r}: give --delimiter")
    split = _splitter(delimiter)
    texts = {i: _strip_comment(lines[i]) for i in content}
    first = split(texts[content[0]])
    header = options.header
    if header is None:
        # pandas' to_csv of a DataFrame made from an array: ",0,1,2" (index, then column numbers).
        pandas_numbers = len(first) > 1 and first == ["", *map(str, range(len(first) - 1))]
        header = pandas_numbers or any(not _is_na(f) and _number(f, decimal) is None for f in first)
    rows = content[1:] if header else content
    if not rows:
        raise CLIError(f"{path}: no data rows after the header (line {content[0] + 1})")
    num_columns = len(split(texts[rows[0]]))
    names = None
    if header:
        names = list(first)
        if len(names) == num_columns - 1:  # R's write.table: no name above the row names
            names.insert(0, "")
        elif len(names) != num_columns:
            raise CLIError(
                f"{path}, line {rows[0] + 1}: {num_columns} values, but the header (line "
                f"{content[0] + 1}) names {len(names)} columns"
            )
    index_col: int | None
    if options.index_col is not None:
        index_col = _resolve_column(options.index_col, names, num_columns, "--index-col", path)
    else:
        index_col = 0 if names is not None and names[0] == "" and num_columns > 1 else None
    if options.columns is not None:
        used = [_resolve_column(spec, names, num_columns, "--columns entry", path) for spec in options.columns]
        if len(set(used)) != len(used):
            raise CLIError(f"{path}: --columns {','.join(options.columns)} uses a column more than once")
        if options.index_col is not None and index_col in used:
            raise CLIError(f"{path}: {_column_label(index_col, names)} is both --index-col and in --columns")
    else:
        used = [c for c in range(num_columns) if c != index_col]
    feature_names = None if names is None else tuple(names[c] or f"column {c}" for c in used)

    # Fast path: NumPy's C reader, when every line has the same number of fields and no value is missing.
    data_texts = [texts[i] for i in rows]
    if decimal != ".":
        data_texts = [text.replace(decimal, ".") for text in data_texts]
    X = None
    if '"' not in "".join(data_texts[:1000]):
        try:
            if index_col is None and options.columns is None:
                X = np.loadtxt(data_texts, delimiter=delimiter, ndmin=2, dtype=np.float64)
                X = X if X.shape[1] == num_columns else None
            elif delimiter is not None and all(text.count(delimiter) == num_columns - 1 for text in data_texts):
                X = np.loadtxt(data_texts, delimiter=delimiter, ndmin=2, dtype=np.float64, usecols=used)
        except ValueError:
            X = None
    if X is not None and np.isfinite(X).all():
        return Data(X, feature_names)

    # Slow path: field by field, naming the line and column of the first problem.
    values = np.empty((len(rows), len(used)), np.float64)
    keep = np.ones(len(rows), bool)
    for r, i in enumerate(rows):
        fields = split(texts[i])
        if len(fields) != num_columns:
            raise CLIError(f"{path}, line {i + 1}: {len(fields)} values, but line {rows[0] + 1} has {num_columns}")
        for j, c in enumerate(used):
            field = fields[c]
            if _is_na(field):
                if options.dropna:
                    keep[r] = False
                    break
                what = "an empty field" if not field else repr(field)
                raise CLIError(
                    f"{path}, line {i + 1}, {_column_label(c, names)}: missing value ({what}): fill it "
                    "in, or leave out such rows with --dropna"
                )
            value = _number(field, decimal)
            if value is None:
                hint = (
                    f" (the decimal mark is {decimal!r}: see --decimal)"
                    if _number(field, "," if decimal == "." else ".") is not None
                    else ""
                )
                raise CLIError(
                    f"{path}, line {i + 1}, {_column_label(c, names)}: cannot read {field!r} as a number{hint}"
                )
            if not np.isfinite(value):
                raise CLIError(
                    f"{path}, line {i + 1}, {_column_label(c, names)}: {field!r} is not a finite "
                    "number: remove or replace it"
                )
            values[r, j] = value
    if not keep.any():
        raise CLIError(f"{path}: every data row has a missing value: none is left after --dropna")
    return Data(values[keep], feature_names, tuple(rows[r] + 1 for r in np.flatnonzero(~keep)))


def _stream_source(path: str, make):
    """``make()``, a source of :mod:`gmmjax._streaming` for ``path``; a missing optional extra
    (pyarrow, zarr) is a one-line :class:`CLIError` saying what to install, not a traceback."""
    try:
        return make()
    except ImportError as exc:
        raise CLIError(f"{path}: {_one_line(exc)}") from None


def _parquet_columns(path: str, specs) -> list[str]:
    """The Parquet column names that ``--columns`` ``specs`` (names or 0-based indices, a name
    winning) choose in ``path`` (a file or a folder of them)."""
    from gmmjax._streaming import parquet_column_names

    names = _stream_source(path, lambda: parquet_column_names(path))
    used = [_resolve_column(spec, names, len(names), "--columns entry", path) for spec in specs]
    if len(set(used)) != len(used):
        raise CLIError(f"{path}: --columns {','.join(specs)} uses a column more than once")
    return [names[c] for c in used]


def _read_source(path: str, options: TableOptions) -> tuple[np.ndarray, tuple | None]:
    """``(X, feature names)`` of what a streamed fit reads (a Parquet file or folder of shards,
    a Zarr array, a folder of ``.npy`` shards), loaded whole by the streaming sources: the same
    rows, dtypes, checks and messages as ``gmmjax fit``. Parquet ``--columns`` are chosen by the
    reader (the features' names are the columns'); those of an array are chosen afterwards."""
    from gmmjax._streaming import ParquetSource, as_source, is_parquet_path

    if options.columns is not None and is_parquet_path(path):
        columns = _parquet_columns(path, options.columns)
        source = _stream_source(path, lambda: ParquetSource(path, columns=columns))
    else:
        source = _stream_source(path, lambda: as_source(path))
    blocks = [block.X for block in source.blocks()]
    X = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)  # dtypes promoted (a block with nulls: float)
    return X, (tuple(source.columns) if isinstance(source, ParquetSource) else None)


def _is_source_path(path: str) -> bool:
    """Data that ``gmmjax fit`` streams and the other commands load whole: a Parquet file, a Zarr
    array, a folder of Parquet or ``.npy`` shards (:func:`gmmjax._streaming.stream_only_path`)."""
    if _extension(path) in (*TEXT_EXTENSIONS, ".npy", ".npz"):
        return False  # checked without importing the streaming module (and JAX)
    from gmmjax._streaming import stream_only_path

    return stream_only_path(path)


def read_data(path, key: str | None = None, options: TableOptions | None = None) -> Data:
    """Reads an ``(N, D)`` float array (and feature names from a header) from ``.npy``, ``.npz``,
    a text table, a Parquet file or a folder of Parquet or ``.npy`` shards, or a Zarr array (the
    last three with :mod:`gmmjax._streaming`'s sources, loaded whole); checks it is finite.

    Raises:
      CLIError: naming the file and what is wrong with it.
    """
    options = TableOptions() if options is None else options
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CLIError(f"{path}: no such file")
    source = _is_source_path(path)
    if not source and not os.path.isfile(path):
        raise CLIError(f"{path}: not a file")
    ext = _extension(path)
    if key is not None and ext != ".npz":
        raise CLIError(f"--key selects an array inside an .npz file; {path} is not one")
    if ext not in TEXT_EXTENSIONS:
        text_only = [
            flag
            for flag, given in (
                ("--index-col", options.index_col is not None),
                ("--header/--no-header", options.header is not None),
                ("--delimiter", options.delimiter is not None),
                ("--decimal", options.decimal != "."),
            )
            if given
        ]
        if text_only and (source or ext in (".npy", ".npz")):
            what = "not one" if source else f"a {ext} file"
            raise CLIError(
                f"{' and '.join(text_only)} read text tables ({', '.join(TEXT_EXTENSIONS)}); {path} is {what}"
            )
    feature_names: tuple | None = None
    try:
        if source:
            X, feature_names = _read_source(path, options)
        elif ext in TEXT_EXTENSIONS:
            return _read_text_table(path, options)
        elif ext == ".npy":
            X = np.load(path, allow_pickle=False)
        elif ext == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = archive.files
                if "format" in names and "weights" in names:
                    raise CLIError(f"{path} is a gmmjax model file, not data")
                if key is None:
                    if len(names) != 1:
                        raise CLIError(f"{path} holds {len(names)} arrays {names}: choose one with --key NAME")
                    key = names[0]
                elif key not in names:
                    raise CLIError(f"{path} has no array {key!r}; it holds {names}")
                X = archive[key]
        else:
            raise CLIError(
                f"{path}: unknown data format {ext or '(no extension)'!r}: use .npy, .npz, "
                f"{', '.join(TEXT_EXTENSIONS)}, .parquet (or a folder of shards) or a Zarr array (.zarr)"
            )
    except UnicodeDecodeError:
        raise CLIError(f"{path}: not a text table (it is not UTF-8 text)") from None
    except (OSError, ValueError, EOFError) as exc:
        if source:
            raise  # the sources' messages name the file (and the rows) already
        if "pickle" in str(exc):  # an object array, or np.load's guess for a file that is neither .npy nor .npz
            raise CLIError(
                f"{path}: not a NumPy {ext} file of numbers (an array of Python objects needs pickle, "
                "and gmmjax never unpickles a file)"
            ) from None
        raise CLIError(f"{path}: cannot read it as {ext[1:]}: {exc}") from None
    if not (np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.bool_)) or np.iscomplexobj(X):
        raise CLIError(f"{path}: expected real numbers, got an array of dtype {X.dtype}")
    if X.ndim == 1:
        X = X[:, None]  # one feature
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise CLIError(f"{path}: expected a 2-D array (samples × features), got shape {X.shape}")
    if options.columns is not None and feature_names is None:  # Parquet's: chosen by the reader
        used = [_resolve_column(spec, None, X.shape[1], "--columns entry", path) for spec in options.columns]
        if len(set(used)) != len(used):
            raise CLIError(f"{path}: --columns {','.join(options.columns)} uses a column more than once")
        X = X[:, used]
    dropped: tuple[int, ...] = ()
    if options.dropna and np.issubdtype(X.dtype, np.floating):
        missing = np.isnan(X).any(axis=1)
        if missing.all():
            raise CLIError(f"{path}: every row has a NaN: none is left after --dropna")
        dropped = tuple(int(r) + 1 for r in np.flatnonzero(missing))  # 1-based rows
        X = X[~missing]
    bad = ~np.isfinite(X)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise CLIError(
            f"{path} contains {int(bad.sum())} NaN or infinite value(s) (the first in data row {row + 1}, "
            f"column index {col}): remove or impute them (--dropna leaves out rows with NaN)"
        )
    return Data(X, feature_names, dropped)


def load_data(path, key: str | None = None, options: TableOptions | None = None) -> np.ndarray:
    """The ``(N, D)`` array of :func:`read_data`."""
    return read_data(path, key, options).X


def load_model(path):
    """Reads a model written by ``gmmjax fit -o`` / :meth:`GaussianMixtureModel.save`."""
    from gmmjax import GaussianMixtureModel

    path = os.fspath(path)
    if not os.path.exists(path) and not os.path.exists(path + ".npz"):
        raise CLIError(f"{path}: no such file")
    try:
        return GaussianMixtureModel.load(path)
    except ValueError as exc:
        raise CLIError(str(exc)) from None


def _check_features(model, X, data_path, model_path):
    if X.shape[1] != model.n_features_in_:
        raise CLIError(
            f"{data_path} has {X.shape[1]} features, but the model {model_path} was fitted on {model.n_features_in_}"
        )


ARRAY_EXTENSIONS = (".npy",) + TEXT_EXTENSIONS


def check_output(path, extensions=ARRAY_EXTENSIONS) -> None:
    """Fails fast (before any work) on an output name with an unknown format, in a missing or
    unwritable folder, or naming a folder."""
    if path is None:
        return
    ext = _extension(path)
    if ext not in extensions:
        raise CLIError(
            f"{path}: unknown output format {ext or '(no extension)'!r}: use {' or '.join(e for e in extensions if e)}"
        )
    folder = os.path.dirname(os.fspath(path))
    if folder and not os.path.isdir(folder):
        raise CLIError(f"{path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a folder: give a file name inside it")
    target = path if ext or "" not in extensions else path + ".npz"  # np.savez's name for "model"
    existed = os.path.exists(target)
    try:  # a real probe: permissions alone do not tell (root, read-only file systems)
        with open(target, "ab"):
            pass
    except OSError as exc:
        raise CLIError(f"{target}: cannot write it ({exc.strerror})") from None
    if not existed:
        os.remove(target)


def write_array(path, array, *, fmt: str) -> None:
    """Writes ``array`` to ``path`` (``.npy``, or a comma-separated text table), or to stdout if ``None``."""
    if path is None:
        np.savetxt(sys.stdout, array, fmt=fmt, delimiter=",")
    elif _extension(path) == ".npy":
        np.save(path, array)
    else:
        np.savetxt(path, array, fmt=fmt, delimiter="\t" if _extension(path) == ".tsv" else ",")


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _print_warning(command: str, message) -> None:
    """The one format of every warning the command line shows: ``gmmjax CMD: warning: ...``."""
    print(f"gmmjax {command}: warning: {_one_line(message)}", file=sys.stderr)


@contextlib.contextmanager
def _one_line_warnings(command: str):
    """Python warnings raised while a command runs are shown by :func:`_print_warning` (not as
    Python's two lines with a file name and a source line); the filters are unchanged."""
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *args, **kwargs: _print_warning(command, message)
        yield


def _cache_disabled(args) -> bool:
    return args.no_cache or os.environ.get("GMMJAX_NO_CACHE", "").strip().lower() not in ("", "0", "false", "no")


def _enable_cache(command: str) -> None:
    """JAX's persistent compilation cache (:func:`gmmjax.enable_compilation_cache`), so that a
    command's programs compile once per machine, not once per run. A cache that cannot be
    created costs only the speed: one warning line, and the command runs on."""
    from gmmjax._cache import enable_compilation_cache

    try:
        enable_compilation_cache()
    except OSError as exc:
        _print_warning(
            command,
            f"the compilation cache is off ({exc}); set GMMJAX_CACHE_DIR to a writable "
            "folder, or GMMJAX_NO_CACHE=1 to silence this",
        )


def _delimiter(text):
    named = {
        "tab": "\t",
        "\\t": "\t",
        "space": WHITESPACE,
        "whitespace": WHITESPACE,
        " ": WHITESPACE,
        "comma": ",",
        "semicolon": ";",
    }
    value = named.get(text.lower(), text)
    if value == WHITESPACE:
        return value
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"expected one character, tab or whitespace, got {text!r}")
    if value in '"#\n\r' or value.isalnum() or value in ".-+":
        raise argparse.ArgumentTypeError(f"{text!r} cannot separate numbers: use e.g. , ; tab or whitespace")
    return value


def _decimal(text):
    if len(text) != 1 or text.isalnum() or text in '-+#"':
        raise argparse.ArgumentTypeError(f"expected one character such as . or , got {text!r}")
    return text


def _column_list(text):
    entries = tuple(field.strip() for field in text.split(","))
    if not all(entries):
        raise argparse.ArgumentTypeError(
            f"expected a comma list of column names or 0-based indices (e.g. x,y or 1,2), got {text!r}"
        )
    return entries


def _add_data_options(p):
    """How DATA is read (every command that reads data)."""
    g = p.add_argument_group(
        "data file options",
        "Text tables (.csv/.txt/.tsv): '#' starts a comment. The first line is a header when one of its "
        "fields is not a number, or when it is ,0,1,... (pandas' to_csv of a DataFrame made from an "
        "array); any other header of numbers needs --header. A first column with an empty header name (pandas' "
        "index) or without a name (R's write.table) holds row labels and is left out. Empty fields, NA, "
        "NaN, null are missing values: an error naming line and column, unless --dropna.",
    )
    g.add_argument("--key", metavar="NAME", help="array to read from an .npz DATA file")
    g.add_argument(
        "--columns",
        type=_column_list,
        metavar="COLS",
        help="features to use: header (or Parquet column) names or 0-based indices, comma-separated (e.g. "
        "x,y or 1,2; a name wins over an index); default: every column but the index column",
    )
    g.add_argument("--index-col", metavar="COL", help="a column of row labels to leave out (name or 0-based index)")
    g.add_argument(
        "--header",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the first line is (--header) or is not (--no-header) a line of column names "
        "(default: detected, see above)",
    )
    g.add_argument(
        "--dropna",
        action="store_true",
        help="leave out rows with a missing value in a used column (their count goes to stderr)",
    )
    g.add_argument(
        "--delimiter",
        type=_delimiter,
        metavar="D",
        help="field separator: one character, tab or whitespace (default: comma, semicolon or tab, "
        "whichever the first line holds, else whitespace)",
    )
    g.add_argument(
        "--decimal",
        type=_decimal,
        default=".",
        metavar="C",
        help="decimal mark (default .; with --decimal , the delimiter is detected among ; and tab)",
    )


def _table_options(args) -> TableOptions:
    return TableOptions(
        columns=args.columns,
        index_col=args.index_col,
        header=args.header,
        dropna=args.dropna,
        delimiter=args.delimiter,
        decimal=args.decimal,
    )


def _read_data(args) -> Data:
    """DATA of a command, with a note on stderr for the rows --dropna left out."""
    data = read_data(args.data, args.key, _table_options(args))
    if data.dropped_lines:
        lines = ", ".join(map(str, data.dropped_lines[:5])) + (", ..." if len(data.dropped_lines) > 5 else "")
        unit = "line" if _extension(args.data) in TEXT_EXTENSIONS else "row"
        print(
            f"gmmjax {args.command}: note: --dropna left out {len(data.dropped_lines)} row"
            f"{'s' * (len(data.dropped_lines) > 1)} with missing values ({unit}{'s' * (len(data.dropped_lines) > 1)} "
            f"{lines}); {data.X.shape[0]} remain",
            file=sys.stderr,
        )
    return data


def _add_em_options(p, n_init_help: str):
    """The EM options ``fit`` and ``select`` share (same names, defaults and checks)."""
    p.add_argument("--n-init", type=_int_at_least(1), default=1, help=n_init_help)
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument(
        "--max-iter",
        type=_int_at_least(0),
        default=100,
        help="EM iteration limit (default 100; 0: the initialisation itself)",
    )
    p.add_argument(
        "--tol",
        type=_nonnegative_float,
        default=1e-3,
        help="stop when the mean log-likelihood changes by less (default 1e-3)",
    )
    p.add_argument(
        "--reg-covar", type=_nonnegative_float, default=1e-6, help="added to covariance diagonals (default 1e-6)"
    )
    p.add_argument("--init-params", choices=INIT_METHODS, default="kmeans", help="initialisation (default kmeans)")
    _add_data_options(p)


# -- fit ---------------------------------------------------------------------------------------------
def _add_fit(commands):
    p = commands.add_parser(
        "fit",
        help="fit a mixture to a data file and print it",
        description="Fit a Gaussian mixture by EM to DATA (.npy, .npz, .csv; streamed: .parquet, .zarr, "
        "folders of shards) and print the weights, means, mean log-likelihood, BIC/AIC, iterations and convergence.",
    )
    p.add_argument(
        "data",
        metavar="DATA",
        help="data file: .npy, .npz (see --key) or .csv/.txt/.tsv; streamed: .parquet (pip install "
        "'gmmjax[parquet]'), a Zarr array .zarr (pip install 'gmmjax[zarr]'), a folder of .npy or .parquet shards",
    )
    p.add_argument(
        "-k", "--num-components", type=_int_at_least(1), required=True, metavar="K", help="number of components"
    )
    p.add_argument("--covariance-type", choices=COVARIANCE_TYPES, default="full", help="(default full)")
    _add_em_options(p, n_init_help="restarts, run as one batch (default 1)")
    p.add_argument(
        "--prior",
        choices=("none", "default"),
        default="none",
        help="none: maximum likelihood (default); default: MAP EM with mclust's default conjugate prior "
        "(priorControl(); in-memory data only)",
    )
    p.add_argument("-o", "--output", metavar="MODEL.npz", help="save the fitted model (.npz)")
    p.add_argument("--plot", metavar="FIG.png", help="save a picture of the data and the fitted components")
    p.add_argument("-v", "--verbose", action="store_true", help="show the fit's progress on stderr")
    p.add_argument(
        "--verbose-interval",
        type=_int_at_least(1),
        default=10,
        metavar="N",
        help="iterations between progress reports (default 10)",
    )
    g = p.add_argument_group(
        "streaming (exact out-of-core EM)",
        "A .npy DATA file larger than --memory-budget, a Parquet file, a Zarr array, or a folder of .npy or "
        ".parquet shards is streamed from disk in batches: the same EM iterations as in memory, with memory "
        "independent of the number of rows.",
    )
    g.add_argument(
        "--stream", action="store_true", help="stream DATA (a .npy file or any of the above) whatever its size"
    )
    g.add_argument(
        "--memory-budget",
        type=_byte_size,
        default=None,
        metavar="SIZE",
        help="stream .npy files larger than this (e.g. 2G, 500M; default a quarter of the RAM)",
    )
    g.add_argument(
        "--batch-size", type=_int_at_least(1), metavar="ROWS", help="rows per streamed batch (default ≈32 MiB)"
    )
    g.add_argument("--checkpoint", metavar="FILE.npz", help="write checkpoints of the streamed fit to FILE (atomic)")
    g.add_argument(
        "--checkpoint-every", type=_int_at_least(1), metavar="N", help="a checkpoint every N iterations (default 1)"
    )
    g.add_argument(
        "--checkpoint-seconds",
        type=_nonnegative_float,
        metavar="S",
        help="also a checkpoint (mid-pass) whenever S seconds have passed since the last",
    )
    g.add_argument("--resume", action="store_true", help="continue the fit saved in --checkpoint")
    p.add_argument(
        "--distributed",
        action="store_true",
        help="one process of a multi-process fit (jax.distributed): the coordinator, process count and id come "
        "from GMMJAX_COORDINATOR (host:port), GMMJAX_NUM_PROCESSES and GMMJAX_PROCESS_ID, or are detected "
        "(Slurm, Open MPI); '{process}' in DATA names this process's own shard file, else each process keeps "
        "its slice of DATA's rows; process 0 prints and saves",
    )
    p.set_defaults(run=_run_fit)


_SIZE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _byte_size(text):
    """``2G``, ``500M``, ``1.5G``, ``123456`` (bytes; K/M/G/T are powers of 1024, optional ``B``/``iB``)."""
    spec = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = spec[-1:] if spec[-1:] in _SIZE_UNITS and spec[-1:] else ""
    try:
        value = float(spec[: len(spec) - len(unit)]) * _SIZE_UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 2G or 500M, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return int(value)


def _default_memory_budget() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4
    except (ValueError, OSError, AttributeError):
        return 2**31


def _streams(args) -> bool:
    """Whether ``gmmjax fit`` streams DATA: asked for (--stream, a checkpoint), data that only
    a streamed fit reads (a folder, Parquet, Zarr), or a .npy file larger than the memory budget."""
    from gmmjax._streaming import stream_only_path

    if args.stream or args.checkpoint or args.resume:
        return True
    if stream_only_path(args.data):
        return True
    if _extension(args.data) != ".npy" or not os.path.isfile(args.data):
        return False
    budget = _default_memory_budget() if args.memory_budget is None else args.memory_budget
    return os.path.getsize(args.data) > budget


def _stream_data(args, path: str):
    """What a streamed ``gmmjax fit`` reads: the source of ``path`` (checked, opened here so that
    a missing optional extra is one line), a Parquet one of the ``--columns`` chosen."""
    from gmmjax._streaming import ParquetSource, as_source, is_parquet_path, streamable_path

    if not streamable_path(path):
        raise CLIError(
            f"{path}: streamed fits read a .npy file, a Parquet file, a Zarr array or a folder of .npy or "
            ".parquet files"
        )
    if args.columns is None:
        return _stream_source(path, lambda: as_source(path))
    if not is_parquet_path(path):
        raise CLIError("--columns cannot be used with a streamed fit of .npy shards or a Zarr array (Parquet only)")
    columns = _parquet_columns(path, args.columns)
    return _stream_source(path, lambda: ParquetSource(path, columns=columns))


def _run_fit_stream(args) -> int:
    """``gmmjax fit`` streamed (:func:`gmmjax._streaming.fit_em_streaming`)."""
    unsupported = [
        flag
        for flag, given in (
            ("--plot", args.plot is not None),
            ("--key", args.key is not None),
            ("--dropna", args.dropna),
            ("--index-col", args.index_col is not None),
            ("--header/--no-header", args.header is not None),
            ("--delimiter", args.delimiter is not None),
        )
        if given
    ]
    if unsupported:
        raise CLIError(
            f"{' and '.join(unsupported)} cannot be used with a streamed fit (a large .npy, shards or a Zarr array)"
        )
    data = _stream_data(args, args.data)
    if args.resume and not args.checkpoint:
        raise CLIError("--resume continues the fit saved in --checkpoint FILE: give --checkpoint")
    model, caught, elapsed = _fitted_model(
        args,
        lambda model: model._fit_stream(
            data,
            None,
            batch_size=args.batch_size,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            checkpoint_seconds=args.checkpoint_seconds,
            resume=args.resume,
        ),
    )
    header = (
        f"gmmjax fit {args.data}: streamed, {model.n_features_in_} features, K={args.num_components}, "
        f"covariance {args.covariance_type}, {args.n_init} restart{'s' * (args.n_init > 1)}, seed {args.seed}"
    )
    return _report_fit(args, model, header, caught, elapsed)


def _fitted_model(args, fit, *, verbose: bool = True):
    """The estimator ``gmmjax fit``'s arguments describe, after ``fit(model)``; returns
    ``(model, warnings caught, seconds)``."""
    from gmmjax import GaussianMixtureModel

    progress = {"verbose": args.verbose, "verbose_interval": args.verbose_interval} if verbose else {}
    model = GaussianMixtureModel(
        num_components=args.num_components,
        num_iters=args.max_iter,
        covariance_type=args.covariance_type,
        tol=args.tol,
        reg_covar=args.reg_covar,
        n_init=args.n_init,
        init_params=args.init_params,
        seed=args.seed,
        prior=None if getattr(args, "prior", "none") == "none" else args.prior,
        **progress,
    )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(model)
    return model, caught, time.perf_counter() - start


DISTRIBUTED_ENV = ("GMMJAX_COORDINATOR", "GMMJAX_NUM_PROCESSES", "GMMJAX_PROCESS_ID")


def _start_distributed() -> tuple[int, int]:
    """``jax.distributed.initialize`` from the environment (see ``--distributed``); returns
    ``(process_id, num_processes)``."""
    given = {name: os.environ.get(name, "") for name in DISTRIBUTED_ENV}
    if any(given.values()) and not all(given.values()):
        missing = [name for name, value in given.items() if not value]
        raise CLIError(f"--distributed: set all of {', '.join(DISTRIBUTED_ENV)} (missing {', '.join(missing)})")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU clusters; accelerators ignore it
    try:
        if all(given.values()):
            jax.distributed.initialize(
                coordinator_address=given["GMMJAX_COORDINATOR"],
                num_processes=int(given["GMMJAX_NUM_PROCESSES"]),
                process_id=int(given["GMMJAX_PROCESS_ID"]),
                initialization_timeout=int(os.environ.get("GMMJAX_INIT_TIMEOUT", "300")),
            )
        else:
            jax.distributed.initialize()  # Slurm, Open MPI, TPU pods: detected
    except (RuntimeError, ValueError) as exc:
        raise CLIError(f"--distributed: jax.distributed.initialize failed: {_one_line(exc)}") from None
    return jax.process_index(), jax.process_count()


def _run_fit_distributed(args) -> int:
    """``gmmjax fit --distributed``: this process's rows, one model fitted over all processes."""
    if args.plot is not None or args.verbose:
        raise CLIError("--distributed fits print no progress and draw no --plot: leave those out")
    process, num_processes = _start_distributed()
    own_file = "{process}" in args.data
    path = args.data.replace("{process}", str(process))
    if _streams(argparse.Namespace(**{**vars(args), "data": path})):
        return _run_fit_distributed_stream(args, path, own_file, process, num_processes)
    data = _read_data(argparse.Namespace(**{**vars(args), "data": path}))
    X = data.X
    if not own_file:  # every process reads the same file and keeps its slice of the rows
        bounds = np.linspace(0, X.shape[0], num_processes + 1).astype(int)
        X = X[bounds[process] : bounds[process + 1]]
    import jax

    from gmmjax import shard_rows

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    try:
        rows = shard_rows(X, mesh, process_local=True)
    except ValueError as exc:
        raise CLIError(f"{path}: {_one_line(exc)}") from None
    model, caught, elapsed = _fitted_model(
        args, lambda model: model.fit(rows.X, sample_weight=rows.sample_weight), verbose=False
    )
    if process != 0:
        return 0
    header = (
        f"gmmjax fit --distributed {args.data}: {num_processes} processes, {jax.device_count()} devices, "
        f"K={args.num_components}, covariance {args.covariance_type}, seed {args.seed}"
    )
    return _report_fit(args, model, header, caught, elapsed)


def _run_fit_distributed_stream(args, path: str, own_file: bool, process: int, num_processes: int) -> int:
    """``gmmjax fit --distributed --stream``: each process streams its own shard file (or
    folder) and the statistics are summed over all processes once per pass."""
    if not own_file:
        raise CLIError(
            f"--distributed with a streamed fit reads one file (or folder) per process: put '{{process}}' in "
            f"DATA (e.g. shard-{{process}}.npy), not {args.data!r}"
        )
    data = _stream_data(args, path)
    if args.resume and not args.checkpoint:
        raise CLIError("--resume continues the fit saved in --checkpoint FILE: give --checkpoint")
    if args.checkpoint_seconds is not None:
        raise CLIError("--checkpoint-seconds (mid-pass) is not available with --distributed: use --checkpoint-every")
    import jax

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    model, caught, elapsed = _fitted_model(
        args,
        lambda model: model._fit_stream(
            data,
            None,
            batch_size=args.batch_size,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            mesh=mesh,
        ),
        verbose=False,
    )
    if process != 0:
        return 0
    header = (
        f"gmmjax fit --distributed {args.data}: streamed, {num_processes} processes, {jax.device_count()} "
        f"devices, K={args.num_components}, covariance {args.covariance_type}, seed {args.seed}"
    )
    return _report_fit(args, model, header, caught, elapsed)


def _report_fit(args, model, header: str, caught, elapsed: float, quality=None, feature_names=None) -> int:
    """What ``gmmjax fit`` prints (and saves with ``-o``): ``quality`` lines, by default the
    lower bound (streamed and distributed fits, whose data is not at hand to score)."""
    for warning in caught:  # one line each, after the progress output
        _print_warning("fit", warning.message)
    print(header)
    _print_feature_names(feature_names)
    print(f"{'component':>9}  {'weight':>7}  mean")
    for k, (weight, mean) in enumerate(zip(model.weights_, model.means_)):
        print(f"{k:>9}  {weight:7.4f}  {_format_vector(mean)}")
    if quality is None:
        quality = [f"lower bound (mean log-likelihood before the last M-step)  {model.lower_bound_:.6f}"]
    for line in quality:
        print(line)
    print(f"iterations {model.n_iter_}   converged {model.converged_}")
    print(f"time (including compilation) {elapsed:.2f} s")
    if args.output is not None:
        model.save(args.output)
        print(f"model saved to {args.output if _extension(args.output) else args.output + '.npz'}")
    return 0


def _plot_module():
    """``gmmjax.plot`` and matplotlib, checked before a long fit rather than after it."""
    try:
        import matplotlib  # noqa: F401

        from gmmjax import plot
    except ImportError as exc:
        raise CLIError(
            f"--plot needs matplotlib and gmmjax.plot ({_one_line(exc)}): pip install 'gmmjax[plots]'"
        ) from None
    return plot


def _close(figure) -> None:
    """Frees a saved figure (pyplot keeps every figure open until closed; main may run in-process)."""
    import matplotlib.pyplot as plt

    plt.close(figure)


def _format_vector(values) -> str:
    # Wide data: the first and last few features, so that a row stays on one line.
    return np.array2string(
        np.asarray(values, dtype=np.float64),
        precision=4,
        suppress_small=True,
        threshold=8,
        edgeitems=3,
        max_line_width=10_000,
    )


def _print_feature_names(names) -> None:
    """``features  x, y, z`` (from the data's header), the first and last few of many."""
    if names is None:
        return
    shown = list(names) if len(names) <= 8 else [*names[:3], "...", *names[-3:]]
    print(f"features  {', '.join(shown)}")


def _run_fit(args) -> int:
    check_output(args.output, (".npz", ""))  # np.savez adds .npz to a name without it
    check_output(args.plot, (".png", ".pdf", ".svg", ".jpg"))
    if args.distributed:
        return _run_fit_distributed(args)
    if _streams(args):
        return _run_fit_stream(args)
    plot = _plot_module() if args.plot else None
    data = _read_data(args)
    X = data.X
    if args.num_components > X.shape[0]:
        raise CLIError(
            f"{args.data} has {X.shape[0]} samples, fewer than -k {args.num_components}: "
            "use fewer components or more data"
        )
    if plot is not None and X.shape[1] < 2:
        raise CLIError(
            f"--plot draws two or more features, but {args.data} has one: leave out --plot (for "
            "1-D data plot a histogram and the model's density, e.g. from gmmjax score --per-sample)"
        )
    model, caught, elapsed = _fitted_model(args, lambda model: model.fit(X))
    header = (
        f"gmmjax fit {args.data}: {X.shape[0]} samples × {X.shape[1]} features, K={args.num_components}, "
        f"covariance {args.covariance_type}, {args.n_init} restart{'s' * (args.n_init > 1)}, seed {args.seed}"
        + (", MAP with mclust's default prior" if args.prior == "default" else "")
    )
    quality = [f"mean log-likelihood  {model.score(X):.6f}", f"BIC  {model.bic(X):.4f}   AIC  {model.aic(X):.4f}"]
    _report_fit(args, model, header, caught, elapsed, quality, data.feature_names)
    if plot is not None:
        ax = plot.plot_mixture(model, X)
        if data.feature_names is not None and X.shape[1] == 2:  # more features: principal axes, named by plot
            ax.set_xlabel(data.feature_names[0])
            ax.set_ylabel(data.feature_names[1])
        ax.set_title(f"{os.path.basename(args.data)}: {args.num_components} components ({args.covariance_type})")
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        _close(ax.figure)
        print(f"picture saved to {args.plot}")
    return 0


# -- select -------------------------------------------------------------------------------------------
def _add_select(commands):
    p = commands.add_parser(
        "select",
        help="choose the number of components (and covariance type) by BIC, AIC or ICL",
        description="Fit a mixture for every number of components in -k (and every covariance type asked "
        "for) as one compiled program, print BIC, AIC and ICL for each, the winner marked, and "
        "the winner; -o saves it, --plot draws the criteria over K.",
    )
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    p.add_argument(
        "-k",
        "--num-components",
        type=_num_components_range,
        required=True,
        metavar="K",
        help="numbers of components to try: A:B (A..B), K (1..K) or a comma list such as 2,4,8",
    )
    p.add_argument(
        "--covariance-type",
        type=_covariance_types,
        default=("full",),
        metavar="TYPE",
        help=f"{', '.join(COVARIANCE_TYPES)}, a comma list of them, or all (default full)",
    )
    p.add_argument("--criterion", choices=CRITERIA, default="bic", help="what the best model minimises (default bic)")
    _add_em_options(p, n_init_help="restarts per fit (default 1)")
    p.add_argument("-o", "--output", metavar="MODEL.npz", help="save the best model (.npz)")
    p.add_argument("--plot", metavar="FIG.png", help="save a picture of the criteria over the number of components")
    p.set_defaults(run=_run_select)


def _describe_range(values) -> str:
    values = list(values)
    if len(values) > 2 and values == list(range(values[0], values[-1] + 1)):
        return f"{values[0]}..{values[-1]}"
    return ", ".join(map(str, values))


def _run_select(args) -> int:
    check_output(args.output, (".npz", ""))  # np.savez adds .npz to a name without it
    check_output(args.plot, (".png", ".pdf", ".svg", ".jpg"))
    plot = _plot_module() if args.plot else None
    data = _read_data(args)
    X = data.X
    candidates, types = args.num_components, args.covariance_type
    if candidates[-1] > X.shape[0]:
        raise CLIError(
            f"{args.data} has {X.shape[0]} samples, fewer than the largest K {candidates[-1]}: "
            "try fewer components or provide more data"
        )
    from gmmjax import GaussianMixtureModel

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = GaussianMixtureModel.select(
            X,
            candidates,
            covariance_types=types,
            criterion=args.criterion,
            n_init=args.n_init,
            max_iter=args.max_iter,
            tol=args.tol,
            reg_covar=args.reg_covar,
            init_params=args.init_params,
            seed=args.seed,
        )
    elapsed = time.perf_counter() - start
    for warning in caught:
        _print_warning("select", warning.message)

    selection = model.selection_
    table = {
        name: np.asarray(getattr(selection, name))
        for name in ("bic", "aic", "icl", "mean_log_likelihood", "n_iter", "converged")
    }
    best = (int(selection.best_type_index), int(selection.best_index))
    criterion = args.criterion.upper()
    print(
        f"gmmjax select {args.data}: {X.shape[0]} samples × {X.shape[1]} features, "
        f"K = {_describe_range(candidates)}, covariance {', '.join(types)}, "
        f"{args.n_init} restart{'s' * (args.n_init > 1)} each, seed {args.seed}"
    )
    _print_feature_names(data.feature_names)
    width = max(len("type"), *map(len, types))
    print(
        f"{'type':<{width}}  {'K':>3}  {'BIC':>13}  {'AIC':>13}  {'ICL':>13}  {'mean log-lik':>12}  "
        f"{'iterations':>10}  converged"
    )
    for t, covariance_type in enumerate(types):
        for j, k in enumerate(candidates):
            mark = f"  <- best by {criterion}" if (t, j) == best else ""
            print(
                f"{covariance_type:<{width}}  {k:>3}  {table['bic'][t, j]:13.4f}  {table['aic'][t, j]:13.4f}  "
                f"{table['icl'][t, j]:13.4f}  {table['mean_log_likelihood'][t, j]:12.6f}  "
                f"{table['n_iter'][t, j]:>10}  {'yes' if table['converged'][t, j] else 'no'}{mark}"
            )
    print(
        f"best by {criterion}: K={model.num_components}, {model.covariance_type} covariances "
        f"({criterion} {float(selection.scores[best]):.4f})"
    )
    num_fits = len(types) * len(candidates)
    print(f"time for {num_fits} fit{'s' * (num_fits > 1)} in one program (including compilation) {elapsed:.2f} s")
    if args.output is not None:
        model.save(args.output)
        print(f"best model saved to {args.output if _extension(args.output) else args.output + '.npz'}")
    if plot is not None:
        ax = plot.plot_selection(model)
        ax.set_title(
            f"{os.path.basename(args.data)}: best by {criterion} is K={model.num_components}, "
            f"{model.covariance_type} covariances"
        )
        ax.figure.savefig(args.plot, dpi=120, bbox_inches="tight")
        _close(ax.figure)
        print(f"picture saved to {args.plot}")
    return 0


# -- predict ------------------------------------------------------------------------------------------
def _add_model_and_data(p):
    p.add_argument("model", metavar="MODEL", help="model file written by gmmjax fit -o")
    p.add_argument("data", metavar="DATA", help=DATA_HELP)
    _add_data_options(p)


def _load_model_and_data(args):
    model = load_model(args.model)
    X = _read_data(args).X
    _check_features(model, X, args.data, args.model)
    return model, X


def _add_predict(commands):
    p = commands.add_parser(
        "predict",
        help="most probable component of each sample",
        description="Write the most probable component (0..K-1) of each sample of DATA, one per line, or with "
        "--proba the (N, K) posterior probabilities, to stdout or to -o FILE (.csv or .npy).",
    )
    _add_model_and_data(p)
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (.csv, .txt, .tsv or .npy), not stdout")
    p.add_argument("--proba", action="store_true", help="write the (N, K) component probabilities instead")
    p.set_defaults(run=_run_predict)


def _run_predict(args) -> int:
    check_output(args.output)
    model, X = _load_model_and_data(args)
    if args.proba:
        write_array(args.output, model.predict_proba(X), fmt="%.9g")
    else:
        write_array(args.output, model.predict(X), fmt="%d")
    return 0


# -- score --------------------------------------------------------------------------------------------
def _add_score(commands):
    p = commands.add_parser(
        "score",
        help="mean log-likelihood of data under a model",
        description="Print the mean log-likelihood of DATA under MODEL (the log-density averaged over samples); "
        "--per-sample FILE also writes each sample's log-density.",
    )
    _add_model_and_data(p)
    p.add_argument("--per-sample", metavar="FILE", help="write each sample's log-density (.csv or .npy)")
    p.set_defaults(run=_run_score)


def _run_score(args) -> int:
    check_output(args.per_sample)
    model, X = _load_model_and_data(args)
    log_density = model.score_samples(X)
    if args.per_sample is not None:
        write_array(args.per_sample, log_density, fmt="%.9g")
    # The same number as GaussianMixtureModel.score (the mean of score_samples).
    print(f"mean log-likelihood {float(np.mean(log_density)):.9g} ({X.shape[0]} samples)")
    return 0


# -- sample -------------------------------------------------------------------------------------------
def _add_sample(commands):
    p = commands.add_parser(
        "sample",
        help="draw samples from a model",
        description="Draw N samples from MODEL and write them (N, D) to -o FILE (.npy or .csv) or to stdout.",
    )
    p.add_argument("model", metavar="MODEL", help="model file written by gmmjax fit -o")
    p.add_argument("-n", "--num-samples", type=_int_at_least(1), default=1000, help="(default 1000)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE (.npy, .csv, .txt, .tsv), not stdout")
    p.add_argument("--labels", metavar="FILE", help="also write each sample's component (.csv or .npy)")
    p.set_defaults(run=_run_sample)


def _run_sample(args) -> int:
    import jax

    check_output(args.output)
    check_output(args.labels)
    from gmmjax._validation import check_sample_memory

    model = load_model(args.model)
    check_sample_memory(args.num_samples, model.params)  # MemoryError (exit 1) before XLA could abort
    X, labels = model.sample(args.num_samples, key=jax.random.key(args.seed))
    write_array(args.output, X, fmt="%.9g")
    if args.labels is not None:
        write_array(args.labels, labels, fmt="%d")
    return 0


# -- demo ---------------------------------------------------------------------------------------------
def _match_components(true_means, fitted_means):
    """Order of the fitted components that best matches the true ones (fewest squared errors)."""
    from itertools import permutations

    k = len(true_means)
    if k > 8:  # greedy beyond a handful of components
        order, free = [], list(range(k))
        for m in true_means:
            j = min(free, key=lambda i: np.sum((fitted_means[i] - m) ** 2))
            order.append(j)
            free.remove(j)
        return order
    return list(min(permutations(range(k)), key=lambda p: np.sum((fitted_means[list(p)] - true_means) ** 2)))


def run_demo(num_samples: int = 600, seed: int = 0, out=None) -> int:
    import jax

    import gmmjax as gj

    start = time.perf_counter()
    data = gj.generate_gmm_data(
        num_samples=num_samples,
        weights=DEMO_WEIGHTS,
        means=DEMO_MEANS,
        covariances=DEMO_COVARIANCES,
        key=jax.random.key(seed),
    )
    model = gj.GaussianMixtureModel(num_components=2, num_iters=100, seed=seed)
    model.fit(data)
    elapsed = time.perf_counter() - start
    order = _match_components(DEMO_MEANS, np.asarray(model.means))
    # Resolved at call time, not import time, so a redirected sys.stdout (e.g. pytest's capsys) is honoured.
    out = sys.stdout if out is None else out
    p = lambda *a: print(*a, file=out)  # noqa: E731
    with np.printoptions(precision=3, suppress=True):  # local: no global side effect
        p(
            f"gmmjax demo: {num_samples} samples from the original 2-component example (jax {jax.__version__}, "
            f"{jax.devices()[0].platform})"
        )
        for k, j in enumerate(order):
            p(f"component {k}:")
            p(f"  weight      true {DEMO_WEIGHTS[k]:.3f}   estimated {model.weights[j]:.3f}")
            p(f"  mean        true {DEMO_MEANS[k].astype(float)}   estimated {model.means[j]}")
            p("  covariance  true " + np.array2string(DEMO_COVARIANCES[k].astype(float)).replace("\n", "\n" + " " * 18))
            p("              est. " + np.array2string(model.covariances[j]).replace("\n", "\n" + " " * 18))
        p(f"mean log-likelihood {model.lower_bound_:.4f}   iterations {model.n_iter_}   converged {model.converged_}")
        p(f"time (data + fit, including compilation) {elapsed:.2f} s")
    return 0


def _add_demo(commands):
    p = commands.add_parser(
        "demo",
        help="fit the original 2-component example and print the result",
        description="Fit the original 2-component example and print true vs "
        "estimated parameters, log-likelihood, iterations and time.",
    )
    p.add_argument("-n", "--num-samples", type=_int_at_least(2), default=600, help="number of samples (default 600)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.set_defaults(run=lambda args: run_demo(args.num_samples, args.seed))


# -- main ---------------------------------------------------------------------------------------------
# One adder per command (arguments + ``set_defaults(run=...)``): a new command is one more entry.
_COMMANDS = (_add_fit, _add_select, _add_predict, _add_score, _add_sample, _add_demo)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gmmjax",
        description="Gaussian mixture models in JAX.",
        epilog="Run 'gmmjax COMMAND --help' for a command's options.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _COMMANDS:
        add(commands)
    for p in commands.choices.values():
        p.add_argument(
            "--no-cache",
            action="store_true",
            help="do not use the persistent compilation cache (also GMMJAX_NO_CACHE=1); by default "
            "compiled programs are kept in $GMMJAX_CACHE_DIR, else $XDG_CACHE_HOME/gmmjax/xla, "
            "else ~/.cache/gmmjax/xla",
        )
    return parser


def main(argv=None) -> int:
    """Runs the command line; returns the exit code (argparse's own errors and ``--help`` exit directly)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help()
        return 2
    try:
        with _one_line_warnings(args.command):
            if not _cache_disabled(args):
                _enable_cache(args.command)
            return args.run(args)
    except BrokenPipeError:
        # The reader went away (e.g. `gmmjax predict ... | head`): stop quietly, as a tool
        # killed by SIGPIPE would; stdout goes to /dev/null so the exit flush cannot fail again.
        with contextlib.suppress(OSError, ValueError):  # a stdout without a file descriptor
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CLIError, ValueError, OSError, MemoryError) as exc:
        # User errors (the library's ValueErrors say what to do; OSError: e.g. an unwritable output;
        # MemoryError: e.g. more samples than memory holds, refused before allocating them).
        message = f"{exc.strerror}: {exc.filename}" if isinstance(exc, OSError) and exc.filename else exc
        print(f"gmmjax {args.command}: error: {_one_line(message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gmmjax {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
