"""r3mes.work"""
