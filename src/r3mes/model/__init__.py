"""r3mes.model"""
