// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title bcfl contribution reward token
/// @notice An ERC-20 paid to hospitals (and through them, data contributors) for contributions the
///         consortium judged useful. New tokens come into existence only through MINTER_ROLE, which
///         the consortium grants to its RoundSettlement contract; nobody else can mint.
contract RewardToken is ERC20, AccessControl {
    bytes32 public constant MINTER_ROLE = keccak256("MINTER_ROLE");

    /// @notice `payees` and `amounts` of a batch mint have different lengths.
    error MintLengthMismatch(uint256 payees, uint256 amounts);

    /// @param name_ token name, e.g. "bcfl Contribution Reward"
    /// @param symbol_ token symbol, e.g. "BCFLR"
    /// @param admin the consortium's admin: may grant and revoke MINTER_ROLE
    constructor(string memory name_, string memory symbol_, address admin) ERC20(name_, symbol_) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    /// @notice Mint `amount` to `to`.
    function mint(address to, uint256 amount) external onlyRole(MINTER_ROLE) {
        _mint(to, amount);
    }

    /// @notice Mint `amounts[i]` to `payees[i]` for every i, in one call (one role check).
    ///         Zero amounts are skipped.
    function mintBatch(address[] calldata payees, uint256[] calldata amounts) external onlyRole(MINTER_ROLE) {
        uint256 n = payees.length;
        if (n != amounts.length) revert MintLengthMismatch(n, amounts.length);
        for (uint256 i = 0; i < n; ++i) {
            if (amounts[i] != 0) _mint(payees[i], amounts[i]);
        }
    }
}
