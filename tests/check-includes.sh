#!/bin/sh
# The include rule of the house (scripts/check-includes) as part of make check.
exec sh "${top_srcdir:-$(dirname "$0")/..}/scripts/check-includes" "${top_srcdir:-$(dirname "$0")/..}"
