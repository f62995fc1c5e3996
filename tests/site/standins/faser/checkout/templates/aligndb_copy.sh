#!/bin/bash
# placeholder: runAlignment.sh rebuilds aligndb_copy.sh from the head and tail templates
exit 1
