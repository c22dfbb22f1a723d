"""The ipfs:// artifact store on real Kubo nodes of a private swarm on loopback.

Same ids as the file store for every size, fetching from another node of the swarm, artifacts that
outlive their writer, clear errors (missing, unreachable, bad id, too large), tampering caught,
and nodes configured so they never dial outside their swarm.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from multiformats import CID

from bcfl_common.errors import ConfigError, StoreError, StoreIntegrityError
from consortium.loopback import free_port
from consortium.storage import FileStore, content_id, open_store
from consortium.storage_ipfs import LOCATOR_KEY_PREFIX, RAW_BLOCK_LIMIT, IpfsStore, locator_key
from devnet.kubo import KuboNode, generate_swarm_key, private_swarm_problems

pytestmark = pytest.mark.ipfs
# the Kubo fixtures (kubo_bin, ipfs_swarm, ipfs_pair), registered as a plugin rather than imported
pytest_plugins = ["ipfs_fixtures"]
if TYPE_CHECKING:
    from ipfs_fixtures import IpfsSwarm

MiB = 1024 * 1024


def rpc(node: KuboNode, command: str, **params: str) -> httpx.Response:
    return httpx.post(f"{node.api_url}/api/v0/{command}", params=params, timeout=30)


def block_file(node: KuboNode, cid: str) -> Path:
    """Where the node's flatfs blockstore keeps the block ``cid`` (named by its multihash)."""
    key = base64.b32encode(bytes(CID.decode(cid).digest)).decode().rstrip("=")
    matches = list((node.repo / "blocks").glob(f"*/{key}.data"))
    assert len(matches) == 1, f"block {cid} not found in {node.repo / 'blocks'}"
    return matches[0]


def flip_a_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


# -- ids, sizes and the second node ---------------------------------------------------------


@pytest.mark.parametrize(
    "size", [0, 1, 1000, RAW_BLOCK_LIMIT, RAW_BLOCK_LIMIT + 1, 5 * MiB], ids=lambda n: f"{n}B"
)
def test_same_ids_as_file_store_and_fetched_from_the_other_node(
    size: int, ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode], tmp_path: Path
) -> None:
    hospital_a, hospital_b = ipfs_pair
    data = os.urandom(size)
    artifact = ipfs_swarm.store(hospital_a).put(data)
    assert artifact == FileStore(tmp_path / "files").put(data)  # (content id, sha256, size)
    assert artifact.content_id == content_id(data)
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()

    store_b = ipfs_swarm.store(hospital_b)
    assert not store_b.has(artifact.content_id)
    assert store_b.get(artifact.content_id) == data  # by content id alone, over the swarm
    assert ipfs_swarm.store(hospital_a).get(artifact.content_id) == data
    assert store_b.verify(artifact.content_id) == artifact


def test_small_artifacts_are_raw_blocks_and_large_ones_a_dag_with_a_locator(
    ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode]
) -> None:
    hospital_a, hospital_b = ipfs_pair
    store = ipfs_swarm.store(hospital_a)
    small, large = os.urandom(1000), os.urandom(3 * MiB)
    small_id = store.put(small).content_id
    large_id = store.put(large).content_id

    # the small one is a raw block whose CID is the content id
    stat = rpc(hospital_a, "block/stat", arg=small_id, offline="true").json()
    assert stat == {"Key": small_id, "Size": 1000}
    # the large one is not a block (bitswap could not carry it) ...
    assert rpc(hospital_a, "block/stat", arg=large_id, offline="true").status_code != 200
    # ... but a UnixFS DAG found through the IPNS locator derived from its content id
    _, name = locator_key(large_id)
    keys = {k["Name"]: k["Id"] for k in rpc(hospital_a, "key/list").json()["Keys"]}
    assert keys[LOCATOR_KEY_PREFIX + large_id] == name
    root = (
        rpc(hospital_b, "name/resolve", arg=f"/ipns/{name}").json()["Path"].removeprefix("/ipfs/")
    )
    assert CID.decode(root).codec.name == "dag-pb"
    assert rpc(hospital_b, "cat", arg=root).content == large
    assert store.list() == sorted([small_id, large_id])
    # putting the same bytes again is a no-op with the same answer
    assert store.put(large).content_id == large_id
    assert store.has(large_id) and store.has(small_id)


def test_artifact_put_before_any_peer_joined_is_found_later(ipfs_swarm: IpfsSwarm) -> None:
    lonely = ipfs_swarm.node()
    data = os.urandom(2 * MiB)
    cid = ipfs_swarm.store(lonely).put(data).content_id
    late = ipfs_swarm.node(connect_to=[lonely])
    assert ipfs_swarm.store(late).get(cid) == data


def test_a_pinned_copy_outlives_its_writer(ipfs_swarm: IpfsSwarm) -> None:
    writer = ipfs_swarm.node()
    keeper = ipfs_swarm.node(connect_to=[writer])
    small, large = os.urandom(5000), os.urandom(3 * MiB)
    store = ipfs_swarm.store(writer)
    ids = [store.put(small).content_id, store.put(large).content_id]
    keeper_store = ipfs_swarm.store(keeper)
    for cid in ids:
        keeper_store.pin(cid)
    assert keeper_store.list() == sorted(ids)

    writer.stop()
    assert keeper_store.get(ids[0]) == small
    assert keeper_store.get(ids[1]) == large
    # a newcomer that only reaches the keeper finds both by content id (the keeper announced them)
    newcomer = ipfs_swarm.node(connect_to=[keeper])
    newcomer_store = ipfs_swarm.store(newcomer)
    assert newcomer_store.get(ids[0]) == small
    assert newcomer_store.get(ids[1]) == large


# -- errors ---------------------------------------------------------------------------------


def test_missing_content_is_a_clear_error_not_a_hang(
    ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode]
) -> None:
    store = ipfs_swarm.store(ipfs_pair[1], timeout=2)
    missing = content_id(b"never stored anywhere")
    with pytest.raises(StoreError, match="not in store .*within 2s") as caught:
        store.get(missing)
    assert caught.value.code == "ARTIFACT_NOT_FOUND"
    assert missing in caught.value.message
    assert not store.has(missing)


def test_unreachable_node_is_a_store_error_naming_the_url() -> None:
    url = f"ipfs://127.0.0.1:{free_port()}?timeout=2"
    store = open_store(url)  # opening does no I/O
    assert isinstance(store, IpfsStore)
    with store:
        for call in (
            lambda: store.put(b"x"),
            lambda: store.get(content_id(b"x")),
            lambda: store.has(content_id(b"x")),
            lambda: store.put(os.urandom(2 * MiB)),
        ):
            with pytest.raises(StoreError, match="unreachable") as caught:
                call()
            assert caught.value.code == "STORE_UNREACHABLE"
            assert url in caught.value.message


def test_bad_ids_sizes_and_urls(
    ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode]
) -> None:
    store = ipfs_swarm.store(ipfs_pair[0])
    for bad in ("not-a-cid", "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"):
        with pytest.raises(StoreError) as caught:
            store.get(bad)
        assert caught.value.code == "BAD_CONTENT_ID"
    big = store.put(os.urandom(2 * MiB)).content_id
    with pytest.raises(StoreError, match="at most 1000") as caught:
        ipfs_swarm.store(ipfs_pair[1]).get(big, max_bytes=1000)
    assert caught.value.code == "ARTIFACT_TOO_LARGE"
    with pytest.raises(StoreError, match="must be bytes"):
        store.put("text")  # type: ignore[arg-type]
    for url in (
        "ipfs://127.0.0.1:5001/some/path",
        "ipfs://127.0.0.1:5001?timeout=0",
        "ipfs://:5001",
        "ipfs://127.0.0.1:5001?retries=3",
        "ipfs://127.0.0.1:notaport",
    ):
        with pytest.raises(ConfigError):
            open_store(url)
    assert open_store("ipfs://127.0.0.1").api == "http://127.0.0.1:5001"


# -- tampering ------------------------------------------------------------------------------


def test_tampered_raw_block_is_detected_and_repaired_by_put(
    ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode]
) -> None:
    node = ipfs_pair[0]
    store = ipfs_swarm.store(node)
    data = b"encrypted update of hospital A" * 100
    cid = store.put(data).content_id
    flip_a_byte(block_file(node, cid))
    with pytest.raises(StoreIntegrityError, match=cid):
        store.get(cid)
    with pytest.raises(StoreIntegrityError):
        store.verify(cid)
    store.put(data)  # the right bytes again replace the corrupted copy
    assert store.get(cid) == data


def test_tampered_leaf_of_a_large_artifact_is_detected_and_repaired_by_put(
    ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode]
) -> None:
    node = ipfs_pair[0]
    store = ipfs_swarm.store(node)
    data = os.urandom(2 * MiB)
    cid = store.put(data).content_id
    _, name = locator_key(cid)
    root = rpc(node, "name/resolve", arg=f"/ipns/{name}").json()["Path"].removeprefix("/ipfs/")
    leaves = [
        json.loads(line)["Ref"]
        for line in rpc(node, "refs", arg=root, recursive="true").text.splitlines()
    ]
    flip_a_byte(block_file(node, leaves[-1]))
    with pytest.raises(StoreIntegrityError, match=cid):
        store.get(cid)
    store.put(data)  # the right bytes again replace the corrupted blocks
    assert store.get(cid) == data


def test_a_locator_pointing_at_other_bytes_is_caught(
    ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode]
) -> None:
    # the locator key is derivable from the content id, so a swarm member could publish a wrong
    # root: readers must notice, whichever node they read from
    writer, reader = ipfs_pair
    store = ipfs_swarm.store(writer)
    cid = store.put(os.urandom(2 * MiB)).content_id
    forged_root = httpx.post(
        f"{writer.api_url}/api/v0/add",
        params={"cid-version": "1", "raw-leaves": "true", "pin": "true"},
        files={"file": ("other", os.urandom(2 * MiB))},
        timeout=30,
    ).json()["Hash"]
    store._publish_locator(cid, forged_root)
    with pytest.raises(StoreIntegrityError, match=cid):
        store.get(cid)
    with pytest.raises(StoreIntegrityError, match=cid):
        ipfs_swarm.store(reader).get(cid)


# -- the swarm is private -------------------------------------------------------------------


def test_node_config_never_dials_outside_the_swarm(
    ipfs_pair: tuple[KuboNode, KuboNode], kubo_bin: Path, tmp_path: Path
) -> None:
    node = ipfs_pair[0]
    config = node.config()
    assert private_swarm_problems(config) == []
    assert config["Bootstrap"] == []
    assert config["Discovery"]["MDNS"]["Enabled"] is False
    assert config["AutoConf"]["Enabled"] is False and config["AutoTLS"]["Enabled"] is False
    assert config["Routing"]["Type"] == "dht" and config["Routing"]["DelegatedRouters"] == []
    assert config["Ipns"]["DelegatedPublishers"] == [] and config["DNS"]["Resolvers"] == {}
    assert config["Swarm"]["DisableNatPortMap"] is True
    assert (node.repo / "swarm.key").stat().st_mode & 0o077 == 0
    # what the running daemon uses, listens on and announces: loopback only
    running = rpc(node, "config/show").json()
    assert private_swarm_problems(running) == []
    listen = rpc(node, "swarm/addrs/listen").json()["Strings"]
    announced = rpc(node, "id").json()["Addresses"]
    assert listen and all(a.startswith("/ip4/127.0.0.1/") for a in listen + announced)
    peers = rpc(node, "swarm/peers").json()["Peers"]
    assert [p["Peer"] for p in peers] == [ipfs_pair[1].peer_id]

    # Kubo's own defaults would dial the public network; the check says so
    env = {**os.environ, "IPFS_PATH": str(tmp_path / "default-repo")}
    subprocess.run(
        [str(kubo_bin), "init", "--empty-repo"], env=env, check=True, capture_output=True
    )
    default = json.loads((tmp_path / "default-repo" / "config").read_text())
    problems = " | ".join(private_swarm_problems(default))
    for field in (
        "Bootstrap",
        "Discovery.MDNS",
        "AutoConf.Enabled",
        "Routing.Type",
        "Addresses.Swarm",
    ):
        assert field in problems


def test_a_node_with_another_swarm_key_cannot_join(
    ipfs_swarm: IpfsSwarm, ipfs_pair: tuple[KuboNode, KuboNode]
) -> None:
    member = ipfs_pair[0]
    cid = ipfs_swarm.store(member).put(b"for members only").content_id
    outsider = ipfs_swarm.node(swarm_key=generate_swarm_key())
    answer = rpc(outsider, "swarm/connect", arg=member.swarm_addrs[0])
    assert answer.status_code != 200
    assert rpc(outsider, "swarm/peers").json()["Peers"] in (None, [])
    with pytest.raises(StoreError, match="not in store"):
        ipfs_swarm.store(outsider, timeout=1).get(cid)


def test_a_node_refuses_to_start_without_its_swarm_key(kubo_bin: Path, tmp_path: Path) -> None:
    node = KuboNode(tmp_path / "repo", generate_swarm_key(), binary=kubo_bin).init()
    (node.repo / "swarm.key").unlink()
    try:
        with pytest.raises(StoreError, match="exited"):
            node.start(timeout=30)
    finally:
        node.stop()


# -- one behaviour, both stores -------------------------------------------------------------


@pytest.fixture(params=["file", "ipfs"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """The same seam over file:// and over ipfs:// (a node of a one-node private swarm)."""
    if request.param == "file":
        yield open_store(f"file://{tmp_path / 'store'}")
        return
    swarm: IpfsSwarm = request.getfixturevalue("ipfs_swarm")
    node = swarm.node()
    yield swarm.store(node, timeout=2)


def test_store_seam_behaves_the_same(any_store: Any) -> None:
    store = any_store
    data = b"global model, round 3" * 1000
    artifact = store.put(data)
    assert artifact.content_id == content_id(data) and artifact.size == len(data)
    assert store.put(data) == artifact
    assert store.get(artifact.content_id) == data
    assert store.has(artifact.content_id)
    assert store.verify(artifact.content_id) == artifact
    assert artifact.content_id in store.list()
    missing = content_id(b"absent")
    assert not store.has(missing)
    with pytest.raises(StoreError, match="not in store") as caught:
        store.get(missing)
    assert caught.value.code == "ARTIFACT_NOT_FOUND"
    with pytest.raises(StoreError, match="not a valid CID") as caught:
        store.get("bafy-nope")
    assert caught.value.code == "BAD_CONTENT_ID"
    with pytest.raises(StoreError, match="at most 10") as caught:
        store.get(artifact.content_id, max_bytes=10)
    assert caught.value.code == "ARTIFACT_TOO_LARGE"
    with pytest.raises(StoreError, match="must be bytes"):
        store.put(["not", "bytes"])  # type: ignore[arg-type]
