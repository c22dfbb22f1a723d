// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {RewardToken} from "./RewardToken.sol";

/// @title bcfl round settlement and anchor
/// @notice Pays the rewards the consortium's ledger (Hyperledger Fabric) decided for a finalized
///         training round, and anchors a digest of that round, at most once per (trial, round).
///
/// A trial is identified on chain by `trial = keccak256(bytes(trialId))`, the keccak-256 of the
/// UTF-8 trial id used on the ledger. The round digest commits to everything the call pays:
///
///     payoutHash  = keccak256(abi.encode(payees, amounts))
///     roundDigest = keccak256(abi.encode(DIGEST_TAG, trial, round, ledgerDigest, payoutHash))
///
/// where `ledgerDigest` is the digest of the finalized round record on the ledger. The contract
/// recomputes the digest from the call's own payees and amounts and refuses the call unless it
/// equals the digest given, so the anchor and the payment can never disagree: a settler cannot pay
/// amounts other than the ones it anchors. An auditor recomputes the digest from the ledger's
/// rewards and compares it with `anchorOf(trial, round)`.
///
/// Payees must be strictly ascending addresses (one canonical order, no duplicates). Zero amounts
/// are allowed (they are anchored but mint nothing); an empty payee list anchors the round only.
contract RoundSettlement is AccessControl {
    bytes32 public constant SETTLER_ROLE = keccak256("SETTLER_ROLE");
    bytes32 public constant DIGEST_TAG = keccak256("bcfl.settlement.round.v1");
    uint256 public constant MAX_PAYEES = 256;

    RewardToken public immutable token;

    /// @notice A random id chosen at deployment and recorded in the consortium's deployment file.
    ///         It makes every deployment's code unique, so a redeployment on a reset chain (a fresh
    ///         anvil, say) is never mistaken for the original and its settlements.
    bytes32 public immutable deploymentId;

    /// @dev The anchor of each settled round; zero while unsettled. One storage slot per round
    ///      keeps `settle` cheap; the block, payees and amounts are in the round's RoundSettled
    ///      event (indexed by trial, round and digest).
    mapping(bytes32 trial => mapping(uint64 round => bytes32 roundDigest)) private _anchors;

    /// @notice A round was settled: `payees[i]` was paid `amounts[i]` reward tokens (base units).
    ///         The settler is the sender of the transaction that emitted it.
    event RoundSettled(
        bytes32 indexed trial,
        uint64 indexed round,
        bytes32 indexed roundDigest,
        bytes32 ledgerDigest,
        uint256 total,
        address[] payees,
        uint256[] amounts
    );

    error AlreadySettled(bytes32 trial, uint64 round, bytes32 roundDigest);
    error RoundDigestMismatch(bytes32 expected, bytes32 given);
    error LengthMismatch(uint256 payees, uint256 amounts);
    error TooManyPayees(uint256 payees, uint256 maxPayees);
    error PayeesNotAscending(uint256 index, address payee);
    error ZeroTrial();
    error ZeroDigest();

    /// @param admin may grant and revoke SETTLER_ROLE (the consortium's admin)
    /// @param token_ the reward token; this contract must hold its MINTER_ROLE
    /// @param settler the consortium's settler account (the coordinator's key)
    /// @param deploymentId_ random, unique per deployment
    constructor(address admin, RewardToken token_, address settler, bytes32 deploymentId_) {
        token = token_;
        deploymentId = deploymentId_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(SETTLER_ROLE, settler);
    }

    /// @notice Settle (trial, round): mint `amounts[i]` to `payees[i]` and anchor `roundDigest`.
    /// @dev Reverts unless the caller holds SETTLER_ROLE, the round is unsettled, and `roundDigest`
    ///      equals `roundDigestOf(trial, round, ledgerDigest, payees, amounts)`.
    function settle(
        bytes32 trial,
        uint64 round,
        bytes32 roundDigest,
        bytes32 ledgerDigest,
        address[] calldata payees,
        uint256[] calldata amounts
    ) external onlyRole(SETTLER_ROLE) {
        if (trial == bytes32(0)) revert ZeroTrial();
        if (ledgerDigest == bytes32(0)) revert ZeroDigest();
        bytes32 existing = _anchors[trial][round];
        if (existing != bytes32(0)) revert AlreadySettled(trial, round, existing);
        uint256 total = _checkPayees(payees, amounts);
        bytes32 expected = roundDigestOf(trial, round, ledgerDigest, payees, amounts);
        if (expected != roundDigest) revert RoundDigestMismatch(expected, roundDigest);

        _anchors[trial][round] = roundDigest;
        emit RoundSettled(trial, round, roundDigest, ledgerDigest, total, payees, amounts);
        if (total != 0) token.mintBatch(payees, amounts);
    }

    /// @dev Payees strictly ascending (no duplicates, no zero address), lengths equal; the total.
    function _checkPayees(address[] calldata payees, uint256[] calldata amounts) private pure returns (uint256 total) {
        uint256 n = payees.length;
        if (n != amounts.length) revert LengthMismatch(n, amounts.length);
        if (n > MAX_PAYEES) revert TooManyPayees(n, MAX_PAYEES);
        address previous = address(0);
        for (uint256 i = 0; i < n; ++i) {
            address payee = payees[i];
            if (payee <= previous) revert PayeesNotAscending(i, payee); // also rejects address(0)
            previous = payee;
            total += amounts[i];
        }
    }

    /// @notice The anchored digest of (trial, round); zero if it is not settled.
    function anchorOf(bytes32 trial, uint64 round) external view returns (bytes32) {
        return _anchors[trial][round];
    }

    /// @notice Whether (trial, round) has been settled.
    function isSettled(bytes32 trial, uint64 round) external view returns (bool) {
        return _anchors[trial][round] != bytes32(0);
    }

    /// @notice keccak256(abi.encode(payees, amounts)): what a round digest commits to about payment.
    function payoutHashOf(address[] calldata payees, uint256[] calldata amounts) public pure returns (bytes32) {
        return keccak256(abi.encode(payees, amounts));
    }

    /// @notice The digest a settlement of (trial, round) with these payees and amounts must anchor.
    function roundDigestOf(
        bytes32 trial,
        uint64 round,
        bytes32 ledgerDigest,
        address[] calldata payees,
        uint256[] calldata amounts
    ) public pure returns (bytes32) {
        return keccak256(abi.encode(DIGEST_TAG, trial, round, ledgerDigest, payoutHashOf(payees, amounts)));
    }
}
