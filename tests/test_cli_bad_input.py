"""Every CLI answers bad input with one line on stderr, exit code 2, no traceback and nothing written:
at least three cases each, two of them semantic (a missing, corrupt or mismatched file, data missing
offline, an unknown run or experiment). Every CLI runs in this process (a subprocess costs ~5 s of
imports a case). search/frontier.py's cases are in test_frontier.py."""
import importlib
import sys
from pathlib import Path

import pytest
import torch
from torchvision import models as tvm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files of every kind the CLIs read (made once: ~1.7 s a test as a per-test fixture, 85 tests;
    the CLIs only read them, and each test checks that its own output folder stays empty)."""
    tmp_path = tmp_path_factory.mktemp("bad-files")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x80\x04 not a checkpoint")
    seven = tmp_path / "seven.pt"
    torch.save(tvm.resnet18(num_classes=7).state_dict(), seven)
    bad_result = tmp_path / "bad-result"
    bad_result.mkdir()
    (bad_result / "keep_cfg.json").write_text('{"arch": "resnet18", "num_classes": 10, "keep_cfg": {}}')
    (bad_result / "model.pt").write_bytes(b"garbage")
    (bad_result / "record.json").write_text("{not json")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    store = tmp_path / "store.db"
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{store}").create_experiment("exists-but-empty")
    return {"corrupt": str(corrupt), "seven": str(seven), "bad_result": str(bad_result), "missing": "/no/such/file.pt",
            "unwritable": str(blocker / "sub"), "store": f"sqlite:///{store}", "offline": str(tmp_path / "no-data")}


OFFLINE = ["--dataset", "cifar10", "--data-dir", "{offline}"]  # not on disk, and it cannot be downloaded here

CASES = {
    "m2mdc.cli.teacher": [
        (["--teacher", "{missing}"], "no such file"),
        (["--teacher", "{corrupt}"], "is corrupt or not a weights-only PyTorch checkpoint"),
        (OFFLINE, "could not be downloaded"),
        (["--dataset", "digits", "--epochs", "0"], "--epochs must be >= 1"),
    ],
    "m2mdc.cli.compress": [
        (["--dataset", "digits", "--init-from", "{bad_result}"], "is corrupt or not a state_dict"),
        (["--dataset", "digits", "--teacher", "{seven}"], "has a 7-class head but the dataset has 10 classes"),
        (["--dataset", "digits", "--plan", "{missing}"], "neither valid JSON nor a readable JSON file"),
        (OFFLINE, "could not be downloaded"),
        (["--dataset", "digits", "--mid-keep", "1.5"], "--mid-keep: 1.5 is outside (0, 1]"),
    ],
    "m2mdc.cli.allocate": [
        (["--dataset", "digits", "--budget-gmacs", "0.02", "--teacher", "{corrupt}"], "is corrupt"),
        (["--dataset", "folder", "--data-dir", "{offline}", "--budget-gmacs", "0.02"], "has no train/ folder"),
        (["--dataset", "digits", "--budget-gmacs", "0.000001"], "below the smallest resnet18"),
        (["--dataset", "digits", "--budget-gmacs", "0.02", "--depth-share", "2"], "--depth-share: 2.0 is outside"),
    ],
    "m2mdc.cli.demo": [
        (["--out-dir", "{unwritable}"], "is not writable"),
        (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "tpu"], "device"),
        (["--kd-epochs", "0"], "--kd-epochs=0 is outside"),
    ],
    "analysis.review": [
        (["--experiment", "nope", "--mlflow-uri", "{store}"], "no MLflow experiment named 'nope'"),
        (["--experiment", "exists-but-empty", "--mlflow-uri", "{store}"], "holds no search run"),
        (["--experiment", "x", "--mlflow-uri", "sqlite:///{offline}/m.db"], "no MLflow store"),
    ],
    "analysis.export": [
        (["--run-id", "0123abc", "--format", "onnx", "--mlflow-uri", "{store}"], "no MLflow run 0123abc"),
        (["--model-dir", "{offline}", "--format", "onnx"], "has no readable keep_cfg.json"),
        (["--model-dir", "{bad_result}", "--format", "torchscript"], "is corrupt or not a state_dict"),
        (["--model-dir", "{bad_result}", "--format", "pdf"], "invalid choice: 'pdf'"),
    ],
    "analysis.baselines": [
        (["--budget-gmacs", "0.02", "--dataset", "digits", "--experiment", "nope", "--mlflow-uri", "{store}"],
         "no MLflow experiment named 'nope'"),
        (["--budget-gmacs", "0.02", "--dataset", "digits", "--teacher", "{seven}"], "has a 7-class head"),
        (["--budget-gmacs", "0.02", "--budgets", "medium"], "--budgets 'medium': choose from short, long"),
        (["--budget-gmacs", "0"], "--budget-gmacs=0.0 is outside"),
        (["--budget-gmacs", "0.02", "--seeds", "0,1", "--int8-seeds", "2"], "must be among --seeds"),
        (["--budget-gmacs", "0.02", "--seeds", "0,1", "--long-seeds", "2"], "--long-seeds '2' must be among --seeds"),
        (["--budget-gmacs", "0.02", "--budgets", "short", "--long-seeds", "0"], "needs the long budget"),
        (["--budget-gmacs", "0.02", "--long-seeds", "x"], "--long-seeds 'x' must be comma-separated integers"),
        (["--budget-gmacs", "0.02", "--experiment", "a", "--experiment", "a"], "--experiment repeats a search"),
        (["--budget-gmacs", "0.02", "--k", "2", "--screen", "1"], "screen at least --k trials"),
        (["--budget-gmacs", "0.02", "--name", "../elsewhere"], "must be a plain folder name"),
        (["--budget-gmacs", "0.02", "--config", "x={{prune_ratio: 1}}"], "the part after '=' is not JSON"),
        (["--budget-gmacs", "0.02", "--config", '{{"prune_ratio": 0.8}}'], "must be LABEL=JSON object"),
        (["--budget-gmacs", "0.02", "--config", 'x={{"prune_ratoi": 0.8}}'], "unknown knob(s) prune_ratoi"),
        (["--budget-gmacs", "0.02", "--config", 'x={{"mid_keep": 2}}'], "--config x: mid_keep"),
        (["--budget-gmacs", "0.02", "--config", 'x={{"kd_lr": 0.001}}'], "kd_lr set the KD settings every row"),
        (["--budget-gmacs", "0.02", "--config", 'x={{}}', "--config", 'x={{"qat": true}}'], "is given twice"),
        (["--budget-gmacs", "0.02", "--config", 'x={{"planes_keep": {{"layer9": 0.5}}}}'], "must name every stage"),
        (["--budget-gmacs", "0.00001", "--dataset", "digits", "--config", 'x={{"prune_ratio": 0.8}}'],
         "x (--config): cannot be brought within 1e-05 GMACs"),
    ],
    "analysis.finalize": [
        (["--experiment", "nope", "--mlflow-uri", "{store}"], "no MLflow experiment named 'nope'"),
        (["--experiment", "exists-but-empty", "--mlflow-uri", "{store}"], "holds no search run"),
        (["--experiment", "x", "--mlflow-uri", "sqlite:///{offline}/m.db"], "no MLflow store"),
        (["--experiment", "x", "--seeds", "a"], "must be comma-separated integers"),
        (["--experiment", "x", "--k", "3", "--screen", "2"], "screen at least --k trials"),
        (["--experiment", "x", "--screen", "4", "--band", "0"], "--band=0.0 is outside"),
    ],
    "analysis.proxy_rank": [
        (["--experiment", "nope", "--mlflow-uri", "{store}"], "no MLflow experiment named 'nope'"),
        (["--experiment", "exists-but-empty", "--mlflow-uri", "{store}"], "holds no search run"),
        (["--experiment", "x", "--mlflow-uri", "sqlite:///{offline}/m.db"], "no MLflow store"),
        (["--experiment", "x", "--n", "1"], "--n=1 is outside"),
    ],
    "analysis.deploy_table": [
        ([], "nothing to measure"),
        (["--teacher", "{offline}"], "is not a cached teacher folder"),
        (["{bad_result}"], "is corrupt or not a state_dict"),
    ],
    "analysis.compress_table": [
        (["{offline}"], "is missing or not JSON"),
        (["{bad_result}"], "is missing or not JSON"),
        ([], "the following arguments are required"),
    ],
    "analysis.compare_samplers": [
        (["--samplers", "grid"], "choose from tpe, nsga2, random"),
        (["--", "--sampler", "tpe"], "do not pass --sampler or --name after --"),
        (["--", "--budget-gmacs", "0.02", "--dataset", "digits", "--space", "{missing}.yaml"],
         "search space '/no/such/file.pt.yaml' not found"),
        (["--", "--budget-gmacs", "0.02", *OFFLINE], "could not be downloaded"),
    ],
    "analysis.pqd_ablation": [
        (["--orders", "pqd,pqx"], "--orders 'pqd,pqx': each must be one of"),
        (["--orders", "pqd,dpq", "--long-orders", "qpd"], "--long-orders 'qpd': each must be one of --orders"),
        (["--long-orders", "pqd", "--no-long"], "and not with --no-long"),
        (["--teacher", "{seven}", "--dataset", "digits"], "has a 7-class head"),
        (["--teacher", "{corrupt}", "--dataset", "digits"], "is corrupt"),
        (OFFLINE, "could not be downloaded"),
        (["--seeds", "0,x"], "must be comma-separated integers"),
    ],
    "analysis.paper_table": [
        (["--archs", "resnet18", "--teacher", "{corrupt}", "--dataset", "digits"], "is corrupt"),
        (["--archs", "resnet18", *OFFLINE], "could not be downloaded"),
        (["--archs", "vgg16"], "the paper reports resnet18, resnet34, mobilenet_v2"),
    ],
}


@pytest.mark.parametrize("module, args, words", [(m, a, w) for m, cases in CASES.items() for a, w in cases],
                         ids=lambda v: v if isinstance(v, str) and "." in v else None)
def test_bad_input(module, args, words, files, tmp_path, capfd, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("M2MDC_OUT_DIR", str(out))
    argv = [a.format(**files) for a in args]
    if module not in ("analysis.compress_table", "analysis.deploy_table", "analysis.compare_samplers",
                      "analysis.review", "analysis.export", "analysis.finalize", "analysis.proxy_rank") and "--out-dir" not in argv:
        argv += ["--out-dir", str(out)]
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as e:
        rc = main(argv)
        raise SystemExit(rc)
    assert e.value.code == 2, capfd.readouterr()
    err = capfd.readouterr().err  # file-descriptor level: compare_samplers' searches are child processes
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], err
    assert "Traceback" not in err
    written = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not written, written


BENCHMARKS = {
    "benchmarks/data_pipeline.py": [
        (OFFLINE, "could not be downloaded"), (["--arch", "vgg", "--dataset", "digits"], "unknown architecture 'vgg'"),
        (["--dataset", "digits", "--device", "cuda:7"], "device")],
    "benchmarks/kd_epoch.py": [
        (OFFLINE, "could not be downloaded"), (["--batches", "0"], "--batches must be >= 1"),
        (["--batches", "100"], "exceeds the"), (["--threads", "0"], "--threads must be >= 1")],
    "benchmarks/latency.py": [
        (["--checkpoint", "{missing}", "--archs", "resnet18"], "does not exist"),
        (["--checkpoint", "{corrupt}", "--archs", "resnet18"], "is corrupt"),
        (["--checkpoint", "{seven}", "--archs", "resnet34"], "does not fit resnet34"),
        (["--archs", "vgg"], "not recognised")],
    "benchmarks/mi_scoring.py": [
        (OFFLINE, "could not be downloaded"), (["--dataset", "digits", "--samples", "0"], "--samples"),
        (["--dataset", "digits", "--device", "cuda:7"], "device")],
    "benchmarks/latency_budget.py": [
        (["--num-samples", "0"], "--num-samples=0 is outside"), (["--space", "{missing}"], "space"),
        (["--budget-ms", "0.0001", "--threads", "1", "--space", "tests/data/space-lean.yaml"],
         "is below the fastest configuration the space can build"),
        (["--report", "nope"], "no saved benchmark named nope")],
    "benchmarks/qat_convert.py": [
        (["--arch", "vgg"], "invalid choice: 'vgg'"), (["--resolution", "4"], "--resolution=4 is outside [8, 4096]"),
        (["--classes", "1"], "--classes=1 is outside"), (["--threads", "0"], "--threads=0 is outside")],
    "benchmarks/depth_latency.py": [
        (["--arch", "vgg"], "invalid choice: 'vgg'"), (["--budget-gmacs", "0.000001"], "below the thinnest full-depth"),
        (["--batch-sizes", "1,x"], "--batch-sizes must be"), (["--rounds", "0"], "--rounds"),
        (["--config", 'x={{"qat": true}}'], "ships INT8 (QAT) and this benchmark times FP32"),
        (["--config", 'x={{"planes_keep": {{"layer9": 0.5}}}}'], "must name every stage of this model"),
        (["--config", 'x={{"planes_keep": {{"layer1": 2}}}}'], "--config x: planes_keep/layer1: 2 is outside"),
        (["--config", 'x={{"prune_ratoi": 0.8}}'], "unknown knob(s) prune_ratoi"), (["--name", "a/b"], "--name")],
    "benchmarks/search_overhead.py": [
        (["--dataset", "cifar10", "--n", "1", "--out-dir", "{offline}-o"], "could not be downloaded"),
        (["--n", "0"], "--n"), (["--budget-gmacs", "0.000001"], "below the smallest")],
}


@pytest.mark.parametrize("script, args, words", [(s, a, w) for s, cases in BENCHMARKS.items() for a, w in cases])
def test_benchmark_bad_input(script, args, words, files, tmp_path, capfd, monkeypatch):
    """Each script's main() in this process, as the other CLIs. A warning a user would see (Python's
    default filters) is recorded here and fails the test, as the second stderr line it would be."""
    import runpy
    import warnings

    if "cuda:7" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    monkeypatch.setenv("M2MDC_OUT_DIR", str(out))
    monkeypatch.setattr(sys, "argv", [script])  # argparse names the program after it, as when run
    main = runpy.run_path(str(REPO / script), run_name="bad_input")["main"]
    threads = torch.get_num_threads()  # a benchmark may set its --threads before it refuses the input
    try:
        with warnings.catch_warnings(record=True) as seen, pytest.raises(SystemExit) as e:
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for hidden in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=hidden)  # what Python hides outside __main__
            main([a.format(**files) for a in args])
    finally:
        torch.set_num_threads(threads)
    err = capfd.readouterr().err
    assert e.value.code == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in err, err[-2000:]
    assert not seen, [str(w.message) for w in seen]
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
