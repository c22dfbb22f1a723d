"""Refusals against live processes: bad local data, replayed and unauthorised API requests."""

from __future__ import annotations

import base64
import subprocess

import httpx
import pandas as pd
import pytest

from bcfl_common.certificates import x25519_public_key_raw
from bcfl_common.errors import AuthError, ContractError
from consortium.http_auth import sign_request
from devnet.local_network import bcfl_command
from devnet.supervisor import wait_for

pytestmark = pytest.mark.slow


def _rewrite(path, change) -> None:
    frame = pd.read_csv(path)
    change(frame).to_csv(path, index=False)


@pytest.mark.parametrize("problem", ["missing_column", "wrong_type"])
def test_bad_data_file_is_refused_with_nothing_sent(local_network, problem: str) -> None:
    net, trial = local_network(rounds=1)
    train = trial.files[1]["train"]  # hospital2
    column = pd.read_csv(train).columns[0]
    if problem == "missing_column":
        _rewrite(train, lambda f: f.drop(columns=[column]))
    else:
        _rewrite(train, lambda f: f.assign(**{column: ["not a number"] * len(f)}))
    for hospital in net.hospital_names():
        net.start_silo(hospital, trial_id=trial.trial_id)
    bad = net.processes["hospital2"]
    wait_for(lambda: not bad.running, timeout=180, what="hospital2 to refuse its data")
    assert bad.returncode not in (0, None)
    log = bad.log_tail(60)
    assert column in log, log
    # the other hospitals finish the trial; nothing of hospital2's reached the ledger
    final = trial.wait_end(timeout=900)  # round 1 waits out the phases hospital2 misses
    assert final["state"] == "COMPLETED"
    assert "Hospital2MSP" not in trial.submissions(1)
    assert all(v["msp_id"] != "Hospital2MSP" for v in trial.auditor.votes(trial.trial_id, 1))


def test_replayed_and_unauthorised_requests_against_the_server(local_network) -> None:
    net, trial = local_network(rounds=1)
    admin = net.consortium.identity("admin")
    path = f"/api/v1/admin/trials/{trial.trial_id}/halt"
    url = net.base_url + path
    body = b'{"reason": "replay test"}'
    headers = {"content-type": "application/json", **sign_request(admin, "POST", path, body)}
    with httpx.Client() as client:
        # the first copy is a valid admin request ...
        first = client.post(url, content=body, headers=headers)
        assert first.status_code == 200, first.text
        # ... the same signed bytes again are a replay
        again = client.post(url, content=body, headers=headers)
        assert again.status_code == 401
        assert again.json()["code"] == "REPLAYED"
    # an auditor may read but not act
    with net.client("auditor") as auditor:
        assert auditor.trial(trial.trial_id)["state"] == "HALTED"
        with pytest.raises(AuthError):
            auditor.start_trial(trial.trial_id)
    # a hospital cannot read another hospital's enrolment request
    with net.client("hospital1") as hospital1, pytest.raises(AuthError):
        hospital1.enrolment_request(trial.trial_id, "Hospital2MSP")


def test_silo_enroll_registers_its_own_key_and_asks_the_coordinator(local_network) -> None:
    """`bcfl silo enroll` against the live coordinator: the key is registered on the ledger by the
    hospital itself, so the admin can enrol exactly that key and no other."""
    net, trial = local_network(rounds=1)
    with net.client("admin") as admin:
        spec = admin.trial(trial.trial_id)
        admin.create_trial(
            {
                "trial_id": "second",
                "task": spec["task"],
                "data_schema": spec["data_schema"],
                "model": spec["model"],
                "rounds": 1,
                "min_silos": 2,
                # within what the hospital's dataset has left after the first trial's 3.0 (of
                # its default lifetime 10.0): the default 8.0 would be refused, see below
                "dp": {"target_epsilon_micro": 2_000_000},
            }
        )
        enroll = subprocess.run(
            bcfl_command(
                "silo",
                "enroll",
                "--config",
                str(net.silo_config_path("hospital1")),
                "--trial",
                "second",
            ),
            capture_output=True,
            text=True,
        )
        assert enroll.returncode == 0, enroll.stdout + enroll.stderr
        assert [r["msp_id"] for r in admin.enrolment_requests("second", "pending")] == [
            "Hospital1MSP"
        ]
        record = admin.enrol("second", "Hospital1MSP")
        assert (
            record["encryption_public_key"]
            == base64.b64encode(
                x25519_public_key_raw(
                    net.consortium.identity("hospital1").encryption_public_key_pem().decode()
                )
            ).decode()
        )
        # a hospital that registered nothing cannot be enrolled with a key the operator chose
        with pytest.raises(ContractError) as err:
            admin.enrol("second", "Hospital2MSP")
        assert err.value.code == "NOT_FOUND"
        # the patients' lifetime budget spans trials: 3.0 + 2.0 of 10.0 committed, so a third
        # trial planning the default 8.0 on the same dataset is refused at enrolment
        admin.create_trial(
            {
                "trial_id": "third",
                "task": spec["task"],
                "data_schema": spec["data_schema"],
                "model": spec["model"],
                "rounds": 1,
                "min_silos": 2,
            }
        )
        third = subprocess.run(
            bcfl_command(
                "silo",
                "enroll",
                "--config",
                str(net.silo_config_path("hospital1")),
                "--trial",
                "third",
            ),
            capture_output=True,
            text=True,
        )
        assert third.returncode == 0, third.stdout + third.stderr
        with pytest.raises(ContractError) as err:
            admin.enrol("third", "Hospital1MSP")
        assert err.value.code == "BUDGET_EXCEEDED" and "lifetime" in err.value.message
