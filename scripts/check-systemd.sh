#!/usr/bin/env bash
# Placeholder until the systemd unit lands: filled in by the service work.
exit 0
