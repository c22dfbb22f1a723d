"""Gas used by RoundSettlement.settle per payee count, against separate ERC-20 mints as the baseline."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results" / "settlement_gas.json"
AIM_GAS = 200_000  # the aim for 4 payees
AMOUNT = 10**18  # 1 token per payee (the amount does not change gas beyond calldata bytes)


def machine(node: Any) -> dict[str, Any]:
    from consortium.settlement import load_artifact

    compiler = load_artifact("RoundSettlement")["compiler"]
    try:
        node_version = subprocess.run(
            ["node", "--version"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        node_version = None
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "node": node_version,
        "anvil": node.version(),
        "evm_hardfork": node.rpc("anvil_nodeInfo").get("hardFork")
        if _has_node_info(node)
        else None,
        "solc": compiler["version"],
        "solc_settings": compiler["settings"],
        "openzeppelin_contracts": compiler.get("openzeppelin"),
        "web3": metadata.version("web3"),
    }


def _has_node_info(node: Any) -> bool:
    try:
        return isinstance(node.rpc("anvil_nodeInfo"), dict)
    except Exception:  # noqa: BLE001 - older anvils lack it
        return False


def run(counts: list[int]) -> dict[str, Any]:
    from eth_account import Account

    from consortium.settlement import send_transaction
    from devnet.anvil import local_settlement

    rows: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory(prefix="bench-settlement-") as tmp,
        local_settlement(tmp) as loc,
    ):
        client = loc.open()
        w3 = client.w3
        admin = Account.from_key(bytes.fromhex(Path(loc.admin_key_path).read_text().strip()))
        trial = "bench-trial"
        round_no = 0

        def settle(payees: list[str], scenario: str) -> int:
            nonlocal round_no
            round_no += 1
            record = client.settle_round(
                trial, round_no, os.urandom(32), {p: AMOUNT for p in payees}
            )
            assert record.gas_used is not None
            tx = w3.eth.get_transaction(record.tx_hash)
            rows.append(
                {
                    "scenario": scenario,
                    "payees": len(payees),
                    "gas": record.gas_used,
                    "calldata_bytes": len(bytes(tx["input"])),
                }
            )
            return record.gas_used

        def fresh(n: int) -> list[str]:
            return [Account.create().address for _ in range(n)]

        # 1. the very first settlement of a new deployment: token supply and every balance are zero
        settle(fresh(4), "first ever (supply 0)")
        # 2. an anchor-only round
        settle([], "anchor only")
        for n in counts:
            payees = fresh(n)
            settle(payees, "new payees")
            settle(payees, "returning payees")

        # Baseline: paying the same payees without the settlement contract, one ERC-20 mint
        # transaction per payee by an account holding MINTER_ROLE (no anchor, no at-most-once).
        token = client.token
        send_transaction(
            w3,
            admin,
            token.functions.grantRole(token.functions.MINTER_ROLE().call(), admin.address),
            what="grant MINTER_ROLE to the benchmark's baseline minter",
        )
        baseline: dict[tuple[str, int], int] = {}
        for n in counts:
            payees = fresh(n)
            for label in ("new payees", "returning payees"):
                total = 0
                for p in payees:
                    receipt = send_transaction(
                        w3, admin, token.functions.mint(p, AMOUNT), what="baseline mint"
                    )
                    total += int(receipt["gasUsed"])
                baseline[(label, n)] = total
        for row in rows:
            base = baseline.get((row["scenario"], row["payees"]))
            row["baseline_separate_mints_gas"] = base
            row["ratio_to_baseline"] = round(row["gas"] / base, 3) if base else None
            row["gas_per_payee"] = round(row["gas"] / row["payees"]) if row["payees"] else None
        client.close()
        return {"rows": rows, "machine": machine(loc.node)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payees", default="1,2,4,8,16,32", help="comma-separated payee counts")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    counts = sorted({int(x) for x in args.payees.split(",")})

    started = time.time()
    measured = run(counts)
    rows = measured["rows"]

    table = Table(title="RoundSettlement.settle gas (anvil, receipts' gasUsed)")
    for col in (
        "scenario",
        "payees",
        "gas",
        "gas / payee",
        "separate mints",
        "ratio",
        "calldata B",
    ):
        table.add_column(col, justify="left" if col == "scenario" else "right")
    for r in rows:
        table.add_row(
            r["scenario"],
            str(r["payees"]),
            f"{r['gas']:,}",
            f"{r['gas_per_payee']:,}" if r["gas_per_payee"] else "-",
            f"{r['baseline_separate_mints_gas']:,}" if r["baseline_separate_mints_gas"] else "-",
            f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] else "-",
            str(r["calldata_bytes"]),
        )
    four = [r for r in rows if r["payees"] == 4]
    worst4 = max(r["gas"] for r in four) if four else None
    console = Console()
    console.print(table)
    console.print(
        "first ever: the deployment's first settlement (token supply and balances zero); new payees:"
        " payees with zero balance; returning: payees already holding tokens; separate mints: the"
        " same payments as one ERC-20 mint transaction each (baseline, same run)"
    )
    if worst4 is not None:
        verdict = "meets" if worst4 < AIM_GAS else "MISSES"
        console.print(f"4 payees, worst case: {worst4:,} gas ({verdict} the {AIM_GAS:,} aim)")

    result = {
        "benchmark": "settlement_gas",
        "machine": measured["machine"],
        "parameters": {
            "payee_counts": counts,
            "amount_per_payee": {"value": str(AMOUNT), "unit": "token base units (18 decimals)"},
            "aim_4_payees": {"value": AIM_GAS, "unit": "gas"},
            "baseline": "one RewardToken.mint transaction per payee (no anchor, no at-most-once)",
        },
        "figures": [
            {
                "scenario": r["scenario"],
                "payees": r["payees"],
                "gas": {"value": r["gas"], "unit": "gas"},
                "gas_per_payee": {"value": r["gas_per_payee"], "unit": "gas"},
                "baseline_separate_mints": {
                    "value": r["baseline_separate_mints_gas"],
                    "unit": "gas",
                },
                "ratio_to_baseline": {"value": r["ratio_to_baseline"], "unit": "ratio"},
                "calldata": {"value": r["calldata_bytes"], "unit": "bytes"},
            }
            for r in rows
        ],
        "summary": {
            "settle_4_payees_worst": {"value": worst4, "unit": "gas"},
            "meets_aim": worst4 is not None and worst4 < AIM_GAS,
            "wall_time": {"value": round(time.time() - started, 2), "unit": "s"},
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(args.out)
    console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
