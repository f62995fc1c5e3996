"""Argument checking shared by the payload's command lines (generate, aggregate)."""

import argparse
import sys

import numpy as np

EXIT_OK = 0
EXIT_IO = 1
EXIT_BAD_INPUT = 2


class ArgumentParser(argparse.ArgumentParser):
    """Bad arguments exit with EXIT_BAD_INPUT (2), before anything is written."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, "%s: error: %s\n" % (self.prog, message))


def nonneg_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a non-negative integer, got %r" % text) from None
    if v < 0:
        raise argparse.ArgumentTypeError("expected a non-negative integer, got %d" % v)
    return v


def pos_int(text):
    v = nonneg_int(text)
    if v == 0:
        raise argparse.ArgumentTypeError("expected a positive integer, got 0")
    return v


def finite_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a number, got %r" % text) from None
    if not np.isfinite(v):
        raise argparse.ArgumentTypeError("expected a finite number, got %r" % text)
    return v


def pos_float(text):
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError("expected a finite positive number, got %r" % text)
    return v
