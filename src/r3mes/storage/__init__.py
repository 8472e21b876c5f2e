"""r3mes.storage"""
