"""flowlog's command line (click). Commands are thin: parse, build core objects, run, translate errors."""
