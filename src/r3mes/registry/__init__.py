"""r3mes.registry"""
