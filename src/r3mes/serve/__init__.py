"""r3mes.serve"""
