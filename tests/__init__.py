"""The test suite: real servers, real RQ, no mocks."""
