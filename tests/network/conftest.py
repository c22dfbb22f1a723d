"""The real-network tests: Hyperledger Fabric, Ethereum (anvil) and IPFS (Kubo).

The Fabric network (one per session) and its contract fixtures (``fabric_network``,
``fabric_contract_factory``, ``fabric_contract_net``) live in ``tests/fixtures/fabric.py``,
registered for the whole suite in ``tests/conftest.py``: the contract suite runs on Fabric from
tests/contract itself (``contract_net`` host ``fabric``), on the same session network.
"""
