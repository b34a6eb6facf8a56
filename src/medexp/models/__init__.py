"""medexp.models"""
