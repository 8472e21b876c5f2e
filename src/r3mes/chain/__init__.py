"""r3mes.chain"""
