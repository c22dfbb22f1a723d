"""Ledger benchmark: throughput and commit latency of contract transactions, Fabric against embedded.

For each ledger (``--ledger embedded``, ``fabric`` or ``both``) it measures

* submissions: ``commit_update`` by the hospitals, ``--trials`` trials x 4 hospitals, sent by
  ``--concurrency`` threads: transactions per second and commit latency p50/p95;
* votes: ``commit_votes`` likewise, once every trial has reached its voting phase;
* one full round with 4 hospitals (open, commit, reveal, vote commit/reveal, close, aggregate,
  attest): the ledger time from ``open_round`` to the FINALIZED round, hospitals acting in
  parallel within each phase;
* Fabric only: the submissions once more (fresh trials) by clients with ``commit_wait=gateway``,
  which return once their own gateway peer committed rather than every peer.

Every transaction counted is committed: ``submit`` returns after the commit, not the endorsement.

Run: ``python bench/ledger.py [--ledger both] [--trials 50]``. Prints a table and writes
``bench/results/ledger.json``. Fabric needs the binaries (deploy/fabric/build-binaries.sh, run on
demand) and starts a throw-away network in a temporary directory unless ``--network-dir`` points at
a running one (its consortium is then used).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform as host_platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "platform")]

from chaincode.commitments import update_commitment, votes_commitment  # noqa: E402
from consortium.identity import Consortium, init_consortium, organisation_kinds  # noqa: E402
from consortium.ledger import open_ledger  # noqa: E402

HOSPITALS = ("hospital1", "hospital2", "hospital3", "hospital4")


def digest(*parts: object) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


class Driver:
    """Walks trials through the contract with one ledger client per member."""

    def __init__(
        self, url: str, consortium: Consortium, pool: ThreadPoolExecutor, per_thread: bool = False
    ):
        self.url = url
        self.consortium = consortium
        self.pool = pool
        # an embedded ledger's SQLite connection belongs to one thread: one client per thread there
        self.per_thread = per_thread
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()
        self.clients = self._clients()
        self.msp = {m: consortium.members[m].msp_id for m in self.clients}

    def _clients(self) -> dict[str, Any]:
        clients = getattr(self._local, "clients", None)
        if clients is None or (not self.per_thread and self._opened):
            if not self.per_thread and self._opened:
                return self._shared
            clients = {
                m: open_ledger(self.url, self.consortium.identity(m))
                for m in ("admin", "coordinator", *HOSPITALS)
            }
            self._local.clients = clients
            with self._lock:
                self._opened.append(clients)
            if not self.per_thread:
                self._shared = clients
        return clients

    def close(self) -> None:
        for clients in self._opened:
            for client in clients.values():
                try:
                    client.close()
                except (
                    Exception
                ):  # an embedded client's SQLite connection closes only in its thread
                    pass

    def submit(self, who: str, function: str, args: dict[str, Any]) -> tuple[Any, float]:
        start = time.perf_counter()
        result = self._clients()[who].submit(function, args).result
        return result, time.perf_counter() - start

    def parallel(
        self, calls: list[tuple[str, str, dict[str, Any]]]
    ) -> tuple[list[Any], list[float], float]:
        start = time.perf_counter()
        out = list(self.pool.map(lambda c: self.submit(*c), calls))
        return [r for r, _ in out], [t for _, t in out], time.perf_counter() - start

    # -- trial set-up --
    def trial_args(self, trial_id: str) -> dict[str, Any]:
        return {
            "trial_id": trial_id,
            "task": "binary_classification",
            "data_schema": {"columns": {"age": "int", "label": "bool"}},
            "model": {"name": "logreg", "hyperparameters": {"learning_rate": 0.05, "epochs": 1}},
            "initial_model": {"content_id": "cid-initial", "sha256": digest("initial", trial_id)},
            "rounds": 2,
            "min_silos": 2,
            "dp": {"target_epsilon_micro": 3_000_000},
            "evaluation": {
                "acceptance_threshold_micro": 10_000,
                "min_voters": 2,
                "reward_per_round": 1000,
            },
        }

    def start_trials(self, trial_ids: list[str]) -> dict[str, dict[str, Any]]:
        import base64

        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import x25519

        def key() -> str:
            raw = (
                x25519.X25519PrivateKey.generate()
                .public_key()
                .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            )
            return base64.b64encode(raw).decode()

        self.parallel([("admin", "create_trial", self.trial_args(t)) for t in trial_ids])
        self.parallel([("admin", "open_enrolment", {"trial_id": t}) for t in trial_ids])
        for h in HOSPITALS:  # one enrolment per trial at a time (they touch the trial record)
            hospital_keys = {t: key() for t in trial_ids}
            # One dataset per hospital and trial: enrolments on one dataset touch its record.
            self.parallel(
                [
                    (
                        h,
                        "register_dataset",
                        {
                            "dataset_id": f"data-{t}",
                            "commitment": digest("dataset", t, h),
                            "records": 5000,
                            "lifetime_epsilon_micro": 10**9,
                        },
                    )
                    for t in trial_ids
                ]
            )
            self.parallel(
                [
                    (
                        h,
                        "register_encryption_key",
                        {
                            "trial_id": t,
                            "encryption_public_key": hospital_keys[t],
                            "dataset_id": f"data-{t}",
                            "training_records": 1000,
                        },
                    )
                    for t in trial_ids
                ]
            )
            self.parallel(
                [
                    (
                        "admin",
                        "enrol_hospital",
                        {
                            "trial_id": t,
                            "msp_id": self.msp[h],
                            "encryption_public_key": hospital_keys[t],
                        },
                    )
                    for t in trial_ids
                ]
            )
        # The contract checks a schedule's shapes and bounds (the coordinator computes real ones
        # with Opacus): made-up monotone epsilons reaching the target are enough here.
        schedule = {
            self.msp[h]: {
                "training_records": 1000,
                "batches_per_epoch": 16,
                "steps_per_round": 16,
                "noise_multiplier_micro": 1_100_000,
                "epsilon_micro": [1_500_000, 3_000_000],
                "max_update_norm_milli": 5000,
            }
            for h in HOSPITALS
        }
        self.parallel(
            [("admin", "start_trial", {"trial_id": t, "dp_schedule": schedule}) for t in trial_ids]
        )
        keys = {
            t: {
                "trial_id": t,
                "public_context": {"content_id": "cid-context", "sha256": digest("ctx", t)},
                "envelopes": {
                    self.msp[h]: {"content_id": f"cid-env-{h}", "sha256": digest("env", t, h)}
                    for h in HOSPITALS
                },
            }
            for t in trial_ids
        }
        self.parallel([("hospital1", "record_trial_keys", keys[t]) for t in trial_ids])
        rounds, _, _ = self.parallel(
            [("coordinator", "open_round", {"trial_id": t}) for t in trial_ids]
        )
        return dict(zip(trial_ids, rounds, strict=True))

    # -- round phases, across trials --
    def update(self, t: str, rnd: dict[str, Any], h: str) -> dict[str, Any]:
        where = (t, rnd["round"], rnd["attempt"], h)
        return {
            "content_id": f"cid-update-{h}",
            "sha256": digest("update", *where),
            "sample_weight": 100,
            "salt": digest("salt", *where),
        }

    def commit_calls(
        self, rounds: dict[str, dict[str, Any]]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        calls = []
        for t, rnd in rounds.items():
            for h in HOSPITALS:
                u = self.update(t, rnd, h)
                commitment = update_commitment(
                    trial_id=t,
                    round=rnd["round"],
                    msp_id=self.msp[h],
                    sha256=u["sha256"],
                    sample_weight=u["sample_weight"],
                    salt=u["salt"],
                )
                calls.append(
                    (
                        h,
                        "commit_update",
                        {
                            "trial_id": t,
                            "round": rnd["round"],
                            "commitment": commitment,
                            "base_model_sha256": rnd["base"]["model"]["sha256"],
                        },
                    )
                )
        return calls

    def reveal_calls(
        self, rounds: dict[str, dict[str, Any]]
    ) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (h, "reveal_update", {"trial_id": t, "round": rnd["round"], **self.update(t, rnd, h)})
            for t, rnd in rounds.items()
            for h in HOSPITALS
        ]

    def vote_findings(self, voter: str) -> dict[str, dict[str, Any]]:
        finding = {
            "score_micro": 20_000,
            "norm_milli": 1000,
            "similarity_micro": 0,
            "problem": None,
        }
        return {self.msp[c]: dict(finding) for c in HOSPITALS if c != voter}

    def vote_calls(
        self, rounds: dict[str, dict[str, Any]], reveal: bool
    ) -> list[tuple[str, str, dict[str, Any]]]:
        calls = []
        for t, rnd in rounds.items():
            for h in HOSPITALS:
                findings, salt = self.vote_findings(h), digest("vote-salt", t, rnd["round"], h)
                at = {"trial_id": t, "round": rnd["round"]}
                if reveal:
                    calls.append((h, "reveal_votes", {**at, "findings": findings, "salt": salt}))
                else:
                    c = votes_commitment(
                        trial_id=t,
                        round=rnd["round"],
                        msp_id=self.msp[h],
                        findings=findings,
                        salt=salt,
                    )
                    calls.append((h, "commit_votes", {**at, "commitment": c}))
        return calls

    def close_calls(
        self, rounds: dict[str, dict[str, Any]], step: str
    ) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            ("coordinator", step, {"trial_id": t, "round": r["round"]}) for t, r in rounds.items()
        ]

    def finish(self, rounds: dict[str, dict[str, Any]]) -> None:
        self.parallel(self.close_calls(rounds, "close_voting"))
        accepted = {
            t: self._clients()["admin"].evaluate("get_round", {"trial_id": t, "round": r["round"]})[
                "accepted_sha256s"
            ]
            for t, r in rounds.items()
        }
        self.parallel(
            [
                (
                    "coordinator",
                    "record_aggregate",
                    {
                        "trial_id": t,
                        "round": r["round"],
                        "content_id": f"cid-agg-{t}",
                        "sha256": digest("agg", t),
                        "update_sha256s": accepted[t],
                    },
                )
                for t, r in rounds.items()
            ]
        )
        model = {t: digest("model", t) for t in rounds}
        calls = [
            (
                h,
                "attest_model",
                {
                    "trial_id": t,
                    "round": r["round"],
                    "sha256": model[t],
                    **({"content_id": f"cid-model-{t}"} if h == HOSPITALS[0] else {}),
                },
            )
            for t, r in rounds.items()
            for h in HOSPITALS
        ]
        # the first attestation names the model; the others may arrive once it is recorded
        self.parallel([c for c in calls if c[0] == HOSPITALS[0]])
        self.parallel([c for c in calls if c[0] != HOSPITALS[0]])


def measure(
    kind: str, url: str, consortium: Consortium, trials: int, concurrency: int
) -> dict[str, Any]:
    with ThreadPoolExecutor(concurrency) as pool:
        driver = Driver(url, consortium, pool, per_thread=kind == "embedded")
        try:
            ids = [f"bench-{kind}-{i}" for i in range(trials)]
            setup_start = time.perf_counter()
            rounds = driver.start_trials(ids)
            setup = time.perf_counter() - setup_start
            _, sub_lat, sub_wall = driver.parallel(driver.commit_calls(rounds))
            driver.parallel(driver.close_calls(rounds, "close_update_commits"))
            driver.parallel(driver.reveal_calls(rounds))
            driver.parallel(driver.close_calls(rounds, "close_update_reveals"))
            _, vote_lat, vote_wall = driver.parallel(driver.vote_calls(rounds, reveal=False))
            # the round on its own: open_round is measured too
            t = f"bench-{kind}-round"
            driver.start_trials([t])  # set-up (opens round 1)
            rnd_rounds = {
                t: driver._clients()["admin"].evaluate("get_round", {"trial_id": t, "round": 1})
            }
            rnd_rounds[t].setdefault("round", 1)
            start = time.perf_counter()
            for calls in (
                driver.commit_calls(rnd_rounds),
                driver.close_calls(rnd_rounds, "close_update_commits"),
                driver.reveal_calls(rnd_rounds),
                driver.close_calls(rnd_rounds, "close_update_reveals"),
                driver.vote_calls(rnd_rounds, reveal=False),
                driver.close_calls(rnd_rounds, "close_vote_commits"),
                driver.vote_calls(rnd_rounds, reveal=True),
            ):
                driver.parallel(calls)
            driver.finish(rnd_rounds)
            round_time = time.perf_counter() - start
            final = driver._clients()["admin"].evaluate("get_round", {"trial_id": t, "round": 1})
            gateway_wait = (
                _gateway_wait_submissions(driver, url, consortium, pool, trials)
                if kind == "fabric"
                else None
            )
        finally:
            driver.close()
    n_sub, n_vote = len(sub_lat), len(vote_lat)
    extra = {"submission_commit_wait_gateway": gateway_wait} if gateway_wait else {}
    return {
        "ledger": kind,
        "setup_s": round(setup, 3),
        "submission": {
            "count": n_sub,
            "tps": n_sub / sub_wall,
            "p50_ms": percentile(sub_lat, 0.5) * 1e3,
            "p95_ms": percentile(sub_lat, 0.95) * 1e3,
        },
        "vote": {
            "count": n_vote,
            "tps": n_vote / vote_wall,
            "p50_ms": percentile(vote_lat, 0.5) * 1e3,
            "p95_ms": percentile(vote_lat, 0.95) * 1e3,
        },
        "round_4_hospitals_s": round_time,
        "round_phase": final.get("phase"),
        "note": "round time excludes open_round (done in set-up); it covers commit..attest",
        **extra,
    }


def _gateway_wait_submissions(
    driver: Driver, url: str, consortium: Consortium, pool: ThreadPoolExecutor, trials: int
) -> dict[str, Any]:
    """The submissions again (fresh trials), by clients with ``commit_wait=gateway``.

    Each returns once its own gateway peer has committed it, not every peer. That is safe for
    these submitters: every hospital's commitment is a key of its own, and no transaction of theirs
    depends on another member's write. A member whose next transaction reads what another member
    just wrote (the coordinator closing the commit phase, say) needs the default ``all``, or an
    endorsing peer that has not committed the block yet may answer from older state.
    """
    rounds = driver.start_trials([f"bench-fabric-gateway-wait-{i}" for i in range(trials)])
    gateway = Driver(url + ("&" if "?" in url else "?") + "commit_wait=gateway", consortium, pool)
    try:
        _, latencies, wall = gateway.parallel(gateway.commit_calls(rounds))
    finally:
        gateway.close()
    return {
        "count": len(latencies),
        "tps": len(latencies) / wall,
        "p50_ms": percentile(latencies, 0.5) * 1e3,
        "p95_ms": percentile(latencies, 0.95) * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ledger", choices=["embedded", "fabric", "both"], default="both")
    parser.add_argument(
        "--trials", type=int, default=50, help="trials (x4 hospitals = transactions measured)"
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--network-dir", type=Path, default=None, help="a running `bcfl network` to use"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ledger.json")
    args = parser.parse_args(argv)

    results = []
    with tempfile.TemporaryDirectory(prefix="bcfl-bench-") as tmp:
        tmpdir = Path(tmp)
        if args.ledger in ("embedded", "both"):
            from consortium.ledger.embedded import create_embedded_ledger

            consortium = init_consortium(tmpdir / "consortium-embedded", hospitals=4)
            url = f"embedded://{tmpdir / 'ledger.db'}"
            create_embedded_ledger(url, consortium, consortium.identity("admin")).close()
            results.append(measure("embedded", url, consortium, args.trials, args.concurrency))
        if args.ledger in ("fabric", "both"):
            from devnet.fabric_network import FabricNetwork

            if args.network_dir:
                network = FabricNetwork(args.network_dir)
                own = False
            else:
                network = FabricNetwork(tmpdir / "network", hospitals=4)
                own = True
            try:
                started = time.perf_counter()
                network.up()
                up_s = time.perf_counter() - started
                info = network.load_info() or {}
                consortium = Consortium.load(info["consortium_dir"])
                name = f"bench{int(time.time())}"
                network.define_chaincode(name)
                url = f"fabric://{network.info_path}?chaincode={name}"
                admin = open_ledger(url, consortium.identity("admin"))
                admin.submit("init_consortium", {"organisations": organisation_kinds(consortium)})
                admin.close()
                result = measure("fabric", url, consortium, args.trials, args.concurrency)
                result["network_up_s"] = round(up_s, 2)
                result["batch_timeout"] = info.get("batch_timeout")
                results.append(result)
            finally:
                if own:
                    network.down()
    _report(results, args)


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ledger benchmark (4 hospitals)")
    for column in (
        "ledger",
        "submit tx/s",
        "submit p50 ms",
        "submit p95 ms",
        "vote tx/s",
        "vote p50 ms",
        "vote p95 ms",
        "round s",
    ):
        table.add_column(column, justify="right")
    for r in results:
        table.add_row(
            r["ledger"],
            f"{r['submission']['tps']:.1f}",
            f"{r['submission']['p50_ms']:.1f}",
            f"{r['submission']['p95_ms']:.1f}",
            f"{r['vote']['tps']:.1f}",
            f"{r['vote']['p50_ms']:.1f}",
            f"{r['vote']['p95_ms']:.1f}",
            f"{r['round_4_hospitals_s']:.3f}",
        )
    Console().print(table)
    for r in results:
        gw = r.get("submission_commit_wait_gateway")
        if gw:
            print(
                f"{r['ledger']}: submissions with commit_wait=gateway (independent submitters): {gw['tps']:.1f} tx/s, "
                f"p50 {gw['p50_ms']:.1f} ms, p95 {gw['p95_ms']:.1f} ms"
            )
    by = {r["ledger"]: r for r in results}
    ratios = {}
    if "embedded" in by and "fabric" in by:
        ratios = {
            "fabric_over_embedded_submit_tps": by["fabric"]["submission"]["tps"]
            / by["embedded"]["submission"]["tps"],
            "fabric_over_embedded_round_time": by["fabric"]["round_4_hospitals_s"]
            / by["embedded"]["round_4_hospitals_s"],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": {
                    "platform": host_platform.platform(),
                    "python": sys.version.split()[0],
                    "cpus": os.cpu_count(),
                },
                "parameters": {
                    "trials": args.trials,
                    "concurrency": args.concurrency,
                    "hospitals": 4,
                },
                "units": {
                    "tps": "transactions/s",
                    "p50_ms": "ms",
                    "p95_ms": "ms",
                    "round_4_hospitals_s": "s",
                    "network_up_s": "s",
                    "setup_s": "s",
                },
                "results": results,
                "ratios": ratios,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
