// Package aws holds the AWS prerequisites of a credmatrix deployment as
// files — the IAM policies of the broker's and keyguard's IRSA roles, the
// trust policies of the member-account roles, the revoker role, the KMS
// key policy of a key ring — and a test that parses them, renders their
// placeholders and checks that the actions they grant are exactly the AWS
// API calls the code makes (derived from the SDK client interfaces that
// services/broker/awssts and services/keyguard/awskms declare). It has no
// Go API.
package aws
