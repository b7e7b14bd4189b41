def render_all(rows, stats, out):
    return {}
