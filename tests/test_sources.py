"""Streamed fits from Parquet files and Zarr arrays (gmmjax._streaming.ParquetSource, ZarrSource).

Oracles: the in-memory ``fit_em`` on the same rows (the streamed fit must run the same
iterations), and the NumPy array the files were written from (what a source reads, from any
row on). The fits use tests/test_streaming.py's data and settings (N = 2500, D = 3, K = 3,
batches of 768 rows), so the compiled programs are shared with it.
"""

from __future__ import annotations

import sys

import jax
import numpy as np
import pytest
from test_streaming import BATCH, D, K, N, _assert_same_fit, _data, _fit

import gmmjax as gj
from gmmjax._streaming import ParquetSource, StreamError, ZarrSource, as_source, is_streamable


@pytest.fixture(scope="module")
def X():
    return _data()


@pytest.fixture(scope="module")
def weights():
    return np.random.default_rng(1).uniform(0.2, 3.0, size=N).astype(np.float32)


@pytest.fixture(scope="module")
def in_memory(X):
    """fit_em with _fit's settings and the default (k-means) initialisation."""
    return gj.fit_em(jax.random.key(0), X, K, tol=1e-4, max_iter=20)


def _zarr():
    """zarr 3's API writes the test arrays (the reader also uses only what zarr 2 has)."""
    return pytest.importorskip("zarr", minversion="3")


def _table(X, **extra):
    pa = pytest.importorskip("pyarrow")
    return pa.table({**{f"x{j}": X[:, j] for j in range(X.shape[1])}, **extra})


def _write_parquet(path, X, row_group_size, **extra):
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(_table(X, **extra), path, row_group_size=row_group_size)


@pytest.fixture(scope="module")
def parquet_dir(X, tmp_path_factory):
    """Two files (1300 and 1200 rows) in row groups of 300 and 211 rows, which line up with
    neither the fit's batches nor the sources' blocks."""
    folder = tmp_path_factory.mktemp("parquet")
    _write_parquet(folder / "part-0.parquet", X[:1300], 300)
    _write_parquet(folder / "part-1.parquet", X[1300:], 211)
    return folder


@pytest.fixture(scope="module")
def zarr_path(X, tmp_path_factory):
    zarr = _zarr()
    path = str(tmp_path_factory.mktemp("zarr") / "x.zarr")
    array = zarr.create_array(path, shape=X.shape, chunks=(300, D), dtype=X.dtype)
    array[:] = X
    return path


def _rows(source, start=0):
    return np.concatenate([np.asarray(block.X) for block in source.blocks(start)])


# -- exact: the iterations of fit_em -------------------------------------------------------------
def test_parquet_and_zarr_fits_are_fit_em(X, weights, parquet_dir, zarr_path, in_memory):
    zarr = _zarr()
    sources = {
        "parquet folder": str(parquet_dir),
        "list of parquet files": [parquet_dir / "part-0.parquet", parquet_dir / "part-1.parquet"],
        "zarr path": zarr_path,
        "zarr.Array": zarr.open_array(zarr_path, mode="r"),
        "zarr store": zarr.storage.LocalStore(zarr_path, read_only=True),
        "ParquetSource, small blocks": ParquetSource(parquet_dir, columns=["x0", "x1", "x2"], block_rows=100),
    }
    for data in sources.values():
        _assert_same_fit(_fit(data), in_memory)  # N is below the reservoir: k-means init included
    want = _fit(X, sample_weight=weights)
    for data in (str(parquet_dir), zarr_path):
        got = _fit(data, sample_weight=weights)
        assert int(got.n_iter) == int(want.n_iter)
        np.testing.assert_allclose(np.asarray(got.params.means), np.asarray(want.params.means), rtol=1e-5)


def test_estimator_streams_parquet_and_zarr_without_loading_them(parquet_dir, zarr_path, in_memory, monkeypatch):
    zarr = _zarr()
    array = zarr.open_array(zarr_path, mode="r")
    assert is_streamable(array) and is_streamable(ParquetSource(parquet_dir))
    monkeypatch.setattr(type(array), "__array__", lambda *a, **k: pytest.fail("the whole array was loaded"))
    for data in (array, ParquetSource(parquet_dir)):
        model = gj.GaussianMixtureModel(num_components=K, seed=0, tol=1e-4, num_iters=20).fit(data)
        assert model.n_features_in_ == D
        np.testing.assert_allclose(model.means_, np.asarray(in_memory.params.means), rtol=1e-5)
        assert model.n_iter_ == int(in_memory.n_iter)


def test_checkpoints_fingerprint_the_parquet_and_zarr_sources(tmp_path, parquet_dir, zarr_path, in_memory):
    from gmmjax._checkpoint import CheckpointMismatchError

    for name, data in (("parquet", str(parquet_dir)), ("zarr", zarr_path)):
        checkpoint = str(tmp_path / f"{name}.npz")
        whole = _fit(data, checkpoint=checkpoint)
        _assert_same_fit(whole, in_memory)
        _assert_same_fit(_fit(data, checkpoint=checkpoint, resume=True), in_memory)  # finished: its result
    other = ParquetSource(parquet_dir, columns=["x1", "x0", "x2"])
    with pytest.raises(CheckpointMismatchError, match=r"data\.columns: checkpoint \[.x0., .x1., .x2.\]"):
        _fit(other, checkpoint=str(tmp_path / "parquet.npz"), resume=True)


# -- what the sources read -------------------------------------------------------------------------
def test_sources_read_the_rows_from_any_row_in_bounded_chunk_aligned_blocks(X, parquet_dir, zarr_path):
    parquet = ParquetSource(parquet_dir, block_rows=128)
    zarr_source = ZarrSource(zarr_path, block_rows=700)  # rounded down to 2 chunks of 300 rows
    for source in (parquet, zarr_source):
        assert source.num_rows == N and source.num_features == D and source.dtype == np.float32
        for start in (0, 1, 299, 1300, 1301, N - 1):  # where a resumed pass starts
            np.testing.assert_array_equal(_rows(source, start), X[start:], err_msg=f"{type(source).__name__} {start}")
    assert max(len(block.X) for block in parquet.blocks()) <= 128  # memory: a block, not a file
    bounds = [block.where.rsplit(" ", 1)[1].split("..") for block in zarr_source.blocks(301)]
    starts, stops = (np.array([int(b[i]) for b in bounds]) for i in (0, 1))
    assert starts[0] == 301 and np.all(starts[1:] % 600 == 0) and np.all(np.diff(starts) <= 600)
    assert stops[-1] == N and "x.zarr rows 301..600" in next(zarr_source.blocks(301)).where


def test_parquet_columns_types_and_nulls(tmp_path, X):
    pa = pytest.importorskip("pyarrow")
    n = 50
    ints = np.arange(n, dtype=np.int64)
    names = pa.array([f"row {i}" for i in range(n)])
    _write_parquet(tmp_path / "mixed.parquet", X[:n], 20, count=ints, flag=ints % 2 == 0, name=names)
    with pytest.raises(StreamError, match=r"mixed\.parquet: column 'name' \(string\) is not numeric: pass columns="):
        as_source(str(tmp_path / "mixed.parquet"))
    source = ParquetSource(tmp_path / "mixed.parquet", columns=["count", "x1", "flag"])
    assert source.dtype == np.float64 and source.num_features == 3  # int64, float32 and bool together
    want = np.stack([ints, X[:n, 1], ints % 2 == 0], axis=1).astype(np.float64)
    np.testing.assert_array_equal(_rows(source), want)
    with pytest.raises(StreamError, match=r"has no column 'y': its columns are 'x0', 'x1', 'x2', 'count'"):
        ParquetSource(tmp_path / "mixed.parquet", columns=["x0", "y"])
    with pytest.raises(ValueError, match="columns must be a non-empty list of column names"):
        ParquetSource(tmp_path / "mixed.parquet", columns="x0")
    # a null reads as NaN, which a fit refuses naming the file and rows
    values = pa.array([1.5, None, 2.5] * 20, pa.float32())
    counts = pa.array([1, 2, None] * 20, pa.int64())
    pytest.importorskip("pyarrow.parquet").write_table(pa.table({"v": values, "c": counts}), tmp_path / "nulls.parquet")
    block = next(ParquetSource(tmp_path / "nulls.parquet").blocks())
    assert np.isnan(block.X[1, 0]) and np.isnan(block.X[2, 1]) and block.X[0, 1] == 1.0
    with pytest.raises(StreamError, match=r"nulls\.parquet rows 0\.\.60 contains NaN or infinity"):
        gj.fit_em_streaming(jax.random.key(0), str(tmp_path / "nulls.parquet"), 2, max_iter=1)


# -- bad input ------------------------------------------------------------------------------------
def test_bad_parquet_input_is_refused_naming_the_file(tmp_path, X):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    _write_parquet(tmp_path / "a.parquet", X[:100], 50)
    _write_parquet(tmp_path / "b.parquet", X[100:200, :2], 50)
    with pytest.raises(StreamError, match=r"b\.parquet has 2 columns \['x0', 'x1'\] but .*a\.parquet has 3"):
        as_source(str(tmp_path))
    pq.write_table(pa.table({f"x{j}": X[100:200, j].astype(np.float64) for j in range(D)}), tmp_path / "b.parquet")
    with pytest.raises(StreamError, match=r"b\.parquet: column 'x0' holds double but .*a\.parquet holds float"):
        as_source(str(tmp_path))
    data = (tmp_path / "a.parquet").read_bytes()
    (tmp_path / "b.parquet").write_bytes(data[: len(data) // 2])  # truncated: no footer
    with pytest.raises(StreamError, match=r"b\.parquet is not a readable Parquet file \(truncated or corrupt\?\)"):
        as_source(str(tmp_path))
    (tmp_path / "b.parquet").unlink()
    pq.write_table(_table(X[:0]), tmp_path / "empty.parquet")
    with pytest.raises(StreamError, match=r"empty\.parquet holds no rows: there is no data to fit"):
        as_source(str(tmp_path / "empty.parquet"))
    np.save(tmp_path / "c.npy", X[:10])
    with pytest.raises(StreamError, match="holds both .npy and Parquet files"):
        as_source(str(tmp_path))
    (tmp_path / "nothing").mkdir()
    with pytest.raises(StreamError, match="holds no .npy or .parquet files"):
        as_source(str(tmp_path / "nothing"))
    with pytest.raises(StreamError, match="all .npy files or all Parquet files"):
        as_source([tmp_path / "a.parquet", tmp_path / "c.npy"])


def test_corrupt_parquet_page_is_named(tmp_path, X):
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "bad.parquet"
    pq.write_table(_table(X), path, row_group_size=1000, compression="snappy", use_dictionary=False)
    source = ParquetSource(path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    data[middle - 2000 : middle + 2000] = noise  # inside a column chunk of a middle row group
    path.write_bytes(bytes(data))
    with pytest.raises(StreamError, match=r"bad\.parquet: rows from \d+ on could not be read \(corrupt file\?\)"):
        _rows(source)


def test_bad_zarr_input_is_refused_naming_the_array(tmp_path, X, zarr_path):
    zarr = _zarr()
    one_d = zarr.create_array(str(tmp_path / "w.zarr"), shape=(10,), chunks=(5,), dtype="f4")
    one_d[:] = 1.0
    with pytest.raises(StreamError, match=r"w\.zarr holds an array of shape \(10,\): expected \(n_samples"):
        as_source(str(tmp_path / "w.zarr"))
    complex_array = zarr.create_array(str(tmp_path / "c.zarr"), shape=(10, 2), dtype="complex64")
    complex_array[:] = 1j
    with pytest.raises(StreamError, match=r"c\.zarr holds complex numbers"):
        as_source(str(tmp_path / "c.zarr"))
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("features", shape=(10, 2), dtype="f4")[:] = 1.0
    with pytest.raises(StreamError, match=r"g\.zarr is a Zarr group, not an array: pass one of its arrays, e\.g\."):
        as_source(str(tmp_path / "g.zarr"))
    with pytest.raises(FileNotFoundError, match=r"missing\.zarr: no such Zarr array"):
        as_source(str(tmp_path / "missing.zarr"))
    copy = zarr.create_array(str(tmp_path / "copy.zarr"), shape=X.shape, chunks=(300, D), dtype=X.dtype)
    copy[:] = X
    chunk = tmp_path / "copy.zarr" / "c" / "1" / "0"  # rows 300..600
    chunk.write_bytes(b"not a compressed chunk")
    with pytest.raises(StreamError, match=r"copy\.zarr: rows 0\.\.600 could not be read \(corrupt chunk\?\)"):
        _rows(ZarrSource(str(tmp_path / "copy.zarr"), block_rows=600))
    chunk.unlink()  # a partial copy: Zarr would read the missing chunk as zeros
    with pytest.raises(StreamError, match=r"copy\.zarr has 1 of its 9 chunks missing \(a partial copy\?\)"):
        as_source(str(tmp_path / "copy.zarr"))


def test_missing_extras_name_the_pip_extra(monkeypatch, tmp_path):
    for module in ("pyarrow", "pyarrow.parquet"):
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    parquet_message = r"reading Parquet files needs the pyarrow package .*pip install 'gmmjax\[parquet\]'"
    with pytest.raises(ImportError, match=parquet_message):
        as_source(str(tmp_path / "x.parquet"))
    monkeypatch.setitem(sys.modules, "zarr", None)
    with pytest.raises(ImportError, match=r"reading a Zarr array needs the zarr package .*pip install 'gmmjax\[zarr\]"):
        as_source(str(tmp_path / "x.zarr"))


# -- the command line ------------------------------------------------------------------------------
def test_cli_streams_parquet_and_zarr(tmp_path, X, parquet_dir, zarr_path, in_memory, capsys):
    pa = pytest.importorskip("pyarrow")
    from gmmjax._cli import main

    common = ["-k", str(K), "--max-iter", "20", "--tol", "1e-4", "--batch-size", str(BATCH)]
    for data in (str(parquet_dir), zarr_path):
        assert main(["fit", data, *common, "-o", str(tmp_path / "m.npz")]) == 0
        out = capsys.readouterr().out
        assert "streamed" in out and f"iterations {int(in_memory.n_iter)}" in out
        model = gj.GaussianMixtureModel.load(str(tmp_path / "m.npz"))
        np.testing.assert_allclose(model.means_, np.asarray(in_memory.params.means), rtol=1e-5)
    labelled = tmp_path / "labelled.parquet"
    _write_parquet(labelled, X, 1000, label=pa.array(["a"] * N))
    assert main(["fit", str(labelled), *common]) == 1
    assert "column 'label' (string) is not numeric" in capsys.readouterr().err
    assert main(["fit", str(labelled), *common, "--columns", "x0,x1,x2"]) == 0
    assert f"iterations {int(in_memory.n_iter)}" in capsys.readouterr().out
    assert main(["fit", zarr_path, *common, "--columns", "0,1"]) == 1
    assert "--columns cannot be used with a streamed fit of .npy shards or a Zarr array" in capsys.readouterr().err


@pytest.mark.slow  # two processes joined on 127.0.0.1
def test_cli_distributed_each_process_streams_its_own_parquet_file(tmp_path, X):
    from _children import run_cli_cluster

    _write_parquet(tmp_path / "shard-0.parquet", X[:1400], 500)  # ragged: 1400 and 1100 rows
    _write_parquet(tmp_path / "shard-1.parquet", X[1400:], 300)
    out = str(tmp_path / "m.npz")
    shards = str(tmp_path / "shard-{process}.parquet")
    outputs = run_cli_cluster("fit", shards, "-k", str(K), "--tol", "1e-4", "--seed", "1", "-o", out)
    for code, _, err in outputs:
        assert code == 0, err[-3000:]
    assert "streamed, 2 processes" in outputs[0][1]
    model = gj.GaussianMixtureModel.load(out)
    want = gj.fit_em(jax.random.key(1), X, K, tol=1e-4)
    np.testing.assert_allclose(model.means_, np.asarray(want.params.means), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.covariances_, np.asarray(want.params.covariances), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # two fresh processes per format; writes 256 MB files
@pytest.mark.parametrize("kind", ["parquet", "zarr"])
def test_memory_does_not_grow_with_the_rows(tmp_path, kind):
    """Peak RSS streaming 8M rows (256 MB of float32) is within 100 MB of streaming 70k rows
    with the same batches, as for .npy files (test_streaming.py): the file is never loaded."""
    import subprocess

    from _children import ROOT, TESTS, child_env

    zarr = _zarr() if kind == "zarr" else None
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(0)
    peaks = {}
    for rows in (70_000, 8_000_000):
        path = tmp_path / f"x{rows}.{kind}"
        pieces = range(0, rows, 1_000_000)
        if zarr is not None:
            out = zarr.create_array(str(path), shape=(rows, 8), chunks=(65536, 8), dtype="float32")
        else:
            writer = pq.ParquetWriter(path, _table(np.zeros((1, 8), np.float32)).schema)
        for start in pieces:
            n = min(1_000_000, rows - start)
            block = (rng.normal(size=(n, 8)) + 5.0 * rng.integers(0, 4, size=(n, 1))).astype(np.float32)
            if zarr is not None:
                out[start : start + n] = block
            else:
                writer.write_table(_table(block), row_group_size=250_000)
        if zarr is None:
            writer.close()
        script = str(TESTS / "_stream_memory_script.py")
        done = subprocess.run(
            [sys.executable, script, str(path)], env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        peaks[rows] = float(done.stdout.strip().splitlines()[-1])
    assert peaks[8_000_000] - peaks[70_000] < 100, peaks
