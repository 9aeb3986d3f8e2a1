-- One database per participant of the demo data space (docker/compose.yaml).
-- Run once by the postgres image, when its volume is empty.
CREATE DATABASE city;
CREATE DATABASE transit;
CREATE DATABASE utility;
CREATE DATABASE consent;
