"""Interoperability: aiozc reading from servers and clients it did not write."""
