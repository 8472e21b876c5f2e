"""r3mes.node"""
