def write(stats, figs, card, out, title=""):
    pass
