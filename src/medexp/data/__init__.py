"""medexp.data"""
