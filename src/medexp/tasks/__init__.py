"""medexp.tasks"""
